import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { claimJobs } from '../../src/jobs/claim.js';
import { completeJobs } from '../../src/jobs/complete.js';
import { recoverStalledJobs } from '../../src/jobs/recover.js';
import { isolatedApp, type TestApp } from '../helpers.js';

let t: TestApp;
let s: string;
before(async () => {
  t = await isolatedApp('prop_locks');
  s = `"${t.schema}"`;
  t.app.task('p', {}, async () => {});
});
after(() => t.cleanup());

type Op =
  | { op: 'defer'; lock: number | null; qlock: number | null; future: boolean }
  | { op: 'claim'; worker: number; limit: number }
  | { op: 'finish'; worker: number }
  | { op: 'crash'; worker: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('defer' as const),
      lock: fc.option(fc.integer({ min: 0, max: 2 }), { freq: 2 }),
      qlock: fc.option(fc.integer({ min: 0, max: 2 }), { freq: 2 }),
      future: fc.boolean().map((b) => b && Math.random() < 0.3),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('claim' as const),
      worker: fc.integer({ min: 0, max: 2 }),
      limit: fc.integer({ min: 1, max: 3 }),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({ op: fc.constant('finish' as const), worker: fc.integer({ min: 0, max: 2 }) }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant('crash' as const), worker: fc.integer({ min: 0, max: 2 }) }),
  },
);

async function invariants() {
  const { rows } = await t.pool.query(
    `SELECT
       (SELECT count(*) FROM (SELECT lock FROM ${s}.jobs WHERE status = 'doing' AND lock IS NOT NULL GROUP BY lock HAVING count(*) > 1) x)::int AS doubled_locks,
       (SELECT count(*) FROM (SELECT queueing_lock FROM ${s}.jobs WHERE status = 'todo' AND queueing_lock IS NOT NULL GROUP BY queueing_lock HAVING count(*) > 1) y)::int AS doubled_queueing`,
  );
  assert.equal(rows[0].doubled_locks, 0, 'at most one doing job per lock');
  assert.equal(rows[0].doubled_queueing, 0, 'at most one todo job per queueing lock');
}

describe('locks and queueing locks (property)', () => {
  it('hold under random interleavings of defer, claim, finish and crash; everything due drains', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 5, maxLength: 60 }), async (ops) => {
        await t.pool.query(`TRUNCATE ${s}.jobs, ${s}.workers`);
        const generation = [0, 0, 0];
        const workerId = (w: number) => `w${w}-${generation[w]}`;
        const register = (w: number) =>
          t.pool.query(
            `INSERT INTO ${s}.workers (id, host, pid, concurrency, stall_timeout_ms) VALUES ($1, 'h', 1, 3, 60000)`,
            [workerId(w)],
          );
        for (const w of [0, 1, 2]) await register(w);
        const doing = new Map<number, { id: string; attempt: number }[]>([
          [0, []],
          [1, []],
          [2, []],
        ]);
        const completed = new Set<string>();
        let n = 0;
        for (const step of ops) {
          if (step.op === 'defer') {
            await t.app.defer(
              'p',
              { n: n++ },
              {
                lock: step.lock === null ? undefined : `L${step.lock}`,
                queueingLock: step.qlock === null ? undefined : `Q${step.qlock}`,
                onConflict: 'ignore',
                delay: step.future ? { hours: 1 } : undefined,
              },
            );
          } else if (step.op === 'claim') {
            const claimed = await claimJobs(t.pool, t.schema, {
              skipTasks: [],
              queues: null,
              limit: step.limit,
              workerId: workerId(step.worker),
              now: null,
            });
            for (const job of claimed) {
              doing.get(step.worker)!.push({ id: job.id, attempt: job.attempts });
              if (job.lock) {
                // Same-lock jobs start in creation order: nothing earlier and due still waits.
                const { rows } = await t.pool.query(
                  `SELECT count(*)::int AS n FROM ${s}.jobs WHERE lock = $1 AND status = 'todo' AND id < $2 AND run_at <= now()`,
                  [job.lock, job.id],
                );
                assert.equal(
                  rows[0].n,
                  0,
                  `job ${job.id} with lock ${job.lock} started before an earlier one`,
                );
              }
            }
          } else if (step.op === 'finish') {
            const claim = doing.get(step.worker)!.shift();
            if (claim !== undefined) {
              const { id } = claim;
              const done = await completeJobs(
                t.pool,
                t.schema,
                workerId(step.worker),
                [{ id, attempt: claim.attempt, task: 'p', durationMs: 1, keepForMs: null }],
                null,
              );
              if (done > 0) {
                assert.ok(!completed.has(id), `job ${id} completed twice`);
                completed.add(id);
              }
            }
          } else {
            await t.pool.query(`DELETE FROM ${s}.workers WHERE id = $1`, [workerId(step.worker)]);
            await recoverStalledJobs(t.pool, t.schema, null);
            doing.set(step.worker, []);
            generation[step.worker]! += 1;
            await register(step.worker);
          }
          await invariants();
        }
        // Drain: workers die, recovery runs, one fresh worker takes everything due.
        await t.pool.query(`DELETE FROM ${s}.workers`);
        await recoverStalledJobs(t.pool, t.schema, null);
        await t.pool.query(
          `INSERT INTO ${s}.workers (id, host, pid, concurrency, stall_timeout_ms) VALUES ('drain', 'h', 1, 9, 60000)`,
        );
        for (let round = 0; round < 200; round++) {
          const claimed = await claimJobs(t.pool, t.schema, {
            skipTasks: [],
            queues: null,
            limit: 5,
            workerId: 'drain',
            now: null,
          });
          if (claimed.length === 0) break;
          await invariants();
          await completeJobs(
            t.pool,
            t.schema,
            'drain',
            claimed.map((job) => ({
              id: job.id,
              attempt: job.attempts,
              task: 'p',
              durationMs: 1,
              keepForMs: null,
            })),
            null,
          );
        }
        const { rows } = await t.pool.query(
          `SELECT count(*) FILTER (WHERE status = 'doing')::int AS doing,
                  count(*) FILTER (WHERE status = 'todo' AND run_at <= now())::int AS due
           FROM ${s}.jobs`,
        );
        assert.deepEqual(
          rows[0],
          { doing: 0, due: 0 },
          'nothing stuck: no deadlock on locks or queueing locks',
        );
      }),
      { numRuns: 40 },
    );
  });
});
