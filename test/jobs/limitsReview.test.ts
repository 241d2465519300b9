/**
 * Queue limits attacked as a hostile user would (review of docs/limits.md): each test
 * reproduces a defect found in review, or pins a case that held. Real PostgreSQL, real
 * workers; outcomes counted in rows.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startAdminServer } from '../../src/admin/server.js';
import { type App, createApp } from '../../src/app.js';
import { ValidationError } from '../../src/errors.js';
import { releaseDeadWorkersRuns } from '../../src/jobs/abandoned.js';
import { claimJobs } from '../../src/jobs/claim.js';
import { claimLimitedJobs } from '../../src/jobs/claimLimited.js';
import { RateLimited } from '../../src/jobs/rateLimited.js';
import { heartbeat, unregisterWorker } from '../../src/worker/workersTable.js';
import { databaseUrl, isolatedApp, runCli, type TestApp } from '../helpers.js';
import { waitFor, withRunningWorker } from './support.js';

let t: TestApp;
let q: string;
before(async () => {
  t = await isolatedApp('limitsrev');
  q = `"${t.schema}"`;
});
after(async () => t.cleanup());

const newApp = () => createApp({ databaseUrl: databaseUrl(), schema: t.schema });

async function reset(): Promise<void> {
  await t.pool.query(`TRUNCATE ${q}.queue_limits, ${q}.queue_groups`);
  await t.pool.query(`DELETE FROM ${q}.jobs`);
  await t.pool.query(`DELETE FROM ${q}.abandoned_runs`);
}

/** Runs `app`'s worker around `body`, then stops it gracefully. */
const withWorker = (app: App, body: () => Promise<void>, options: Record<string, unknown> = {}) =>
  withRunningWorker(app, t.pool, t.schema, body, options);

describe('limits review', () => {
  it('the limited claim returns awaited and origin like the plain claim', async () => {
    await reset();
    await t.pool.query(`INSERT INTO ${q}.queue_limits (queue, concurrency) VALUES ('elsewhere', 1)`);
    await t.pool.query(
      `INSERT INTO ${q}.jobs (task, queue, awaited, origin) VALUES ('x', 'default', true, '{"cause":"test"}')`,
    );
    const [job] = await claimLimitedJobs(t.pool, t.schema, {
      queues: null,
      skipTasks: [],
      limit: 10,
      workerId: 'w1',
      now: null,
    });
    assert.equal(job!.awaited, true);
    assert.deepEqual(job!.origin, { cause: 'test' });
  });

  it('deferAndWait keeps its result while some queue has a limit (the limited claim runs every queue)', async () => {
    await reset();
    const app = newApp();
    const sum = app.task('sum-limited', {}, async (args: { a: number; b: number }) => args.a + args.b);
    await app.queues.configure('elsewhere', { concurrency: 1 });
    await withWorker(app, async () => {
      assert.equal(await sum.deferAndWait<number>({ a: 2, b: 3 }, { timeout: { seconds: 30 } }), 5);
      const { rows } = await t.pool.query(`SELECT status, result FROM ${q}.jobs WHERE task = 'sum-limited'`);
      assert.deepEqual(rows, [{ status: 'succeeded', result: 5 }]);
    });
  });

  it('a batch handler throwing RateLimited returns its jobs uncounted and pauses their queue', async () => {
    await reset();
    const app = newApp();
    let calls = 0;
    const bulk = app.task(
      'bulk-limited',
      { queue: 'bulk', batch: { size: 5, maxWait: 50 }, retry: { attempts: 2 } },
      async () => {
        calls += 1;
        throw new RateLimited({ retryAfter: { minutes: 10 } });
      },
    );
    await bulk.deferMany(Array.from({ length: 3 }, (_, n) => ({ args: { n } })));
    await withWorker(app, async () => {
      await waitFor('the batch to run', async () => calls >= 1);
      await waitFor(
        'its jobs settled',
        async () =>
          (await t.pool.query(`SELECT 1 FROM ${q}.jobs WHERE task = 'bulk-limited' AND status = 'doing'`))
            .rowCount === 0,
      );
    });
    const { rows } = await t.pool.query(
      `SELECT status, attempts, run_at > now() + interval '5 minutes' AS later FROM ${q}.jobs
       WHERE task = 'bulk-limited' ORDER BY id`,
    );
    assert.deepEqual(rows, Array(3).fill({ status: 'todo', attempts: 0, later: true }));
    const paused = await t.pool.query(
      `SELECT 1 FROM ${q}.queue_limits WHERE queue = 'bulk' AND paused_until > now() + interval '5 minutes'`,
    );
    assert.equal(paused.rowCount, 1);
  });

  it('a pause too long for a Date is a one-line error naming it, nothing written (library and CLI)', async () => {
    await reset();
    const app = newApp();
    try {
      await assert.rejects(
        app.queues.pause('mail', { for: 1e20 }),
        (error: Error) =>
          error instanceof ValidationError && /^pause of queue "mail" is too long/.test(error.message),
      );
    } finally {
      await app.close();
    }
    const cli = await runCli(['queues', 'pause', 'mail', '--for', '99999999999999999d'], {
      OUTBATCH_SCHEMA: t.schema,
    });
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr.trim(), /^.*pause of queue "mail" is too long/);
    assert.equal(cli.stderr.trim().split('\n').length, 1, cli.stderr);
    assert.equal((await t.pool.query(`SELECT 1 FROM ${q}.queue_limits`)).rowCount, 0);
  });

  it('groups whose jobs are all scheduled later do not starve a due group (round-robin reads past them)', async () => {
    await reset();
    await t.pool.query(`INSERT INTO ${q}.queue_limits (queue, concurrency) VALUES ('mail', 1)`);
    // 20 groups never served (they sort first), each with a job due in an hour; then one due group.
    await t.pool.query(
      `INSERT INTO ${q}.jobs (task, queue, group_key, run_at)
       SELECT 'x', 'mail', 'a' || lpad(g::text, 2, '0'), now() + interval '1 hour' FROM generate_series(1, 20) g`,
    );
    await t.pool.query(`INSERT INTO ${q}.jobs (task, queue, group_key) VALUES ('x', 'mail', 'zz')`);
    const claimed = await claimLimitedJobs(t.pool, t.schema, {
      queues: null,
      skipTasks: [],
      limit: 10,
      workerId: 'w1',
      now: null,
    });
    assert.deepEqual(
      claimed.map((job) => job.group_key),
      ['zz'],
    );
  });

  it('a cancelled job whose handler ignores its signal keeps its slot until the handler returns', async () => {
    await reset();
    const app = newApp();
    let inside = 0;
    let most = 0;
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const started: string[] = [];
    const slow = app.task('ignores-signal', { queue: 'one' }, async (_args: object, ctx) => {
      inside += 1;
      most = Math.max(most, inside);
      started.push(ctx.job.id);
      if (started.length === 1) await released; // never looks at ctx.signal
      inside -= 1;
    });
    await app.queues.configure('one', { concurrency: 1 });
    const first = await slow.defer({});
    assert.ok(first.enqueued);
    await slow.defer({});
    await withWorker(app, async () => {
      await waitFor('the first job to start', async () => started.length === 1);
      await app.jobs.cancel([first.id]);
      const { rows } = await t.pool.query(`SELECT job_id::text FROM ${q}.abandoned_runs`);
      assert.deepEqual(rows, [{ job_id: first.id }]);
      // Another worker asking now finds the queue full: the cancelled run still counts.
      const claimed = await claimLimitedJobs(t.pool, t.schema, {
        queues: ['one'],
        skipTasks: [],
        limit: 10,
        workerId: 'another',
        now: null,
      });
      assert.deepEqual(claimed, []);
      assert.equal(started.length, 1);
      release();
      await waitFor(
        'the second job to start once the first handler returned',
        async () => started.length === 2,
      );
      await waitFor(
        'the abandoned run to be released',
        async () => (await t.pool.query(`SELECT 1 FROM ${q}.abandoned_runs`)).rowCount === 0,
      );
    });
    assert.equal(most, 1);
    const { rows } = await t.pool.query(`SELECT status FROM ${q}.jobs WHERE id = $1`, [first.id]);
    assert.equal(rows[0].status, 'cancelled');
  });

  it('a handler past its timeout that ignores its signal holds its lock until it returns', async () => {
    await reset();
    const app = newApp();
    let inside = 0;
    let most = 0;
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const started: string[] = [];
    const stubborn = app.task(
      'outlives-timeout',
      { timeout: { milliseconds: 200 }, retry: { attempts: 1 } },
      async (_args: object, ctx) => {
        inside += 1;
        most = Math.max(most, inside);
        started.push(ctx.job.id);
        if (started.length === 1) await released;
        inside -= 1;
      },
    );
    const first = await stubborn.defer({}, { lock: 'account-7' });
    assert.ok(first.enqueued);
    await stubborn.defer({}, { lock: 'account-7' });
    await withWorker(app, async () => {
      await waitFor(
        'the first attempt to fail by its timeout',
        async () =>
          (await t.pool.query(`SELECT 1 FROM ${q}.jobs WHERE id = $1 AND status = 'failed'`, [first.id]))
            .rowCount === 1,
      );
      const { rows } = await t.pool.query(`SELECT job_id::text, lock FROM ${q}.abandoned_runs`);
      assert.deepEqual(rows, [{ job_id: first.id, lock: 'account-7' }]);
      // The plain claim (no limits anywhere) sees the lock taken.
      const claimed = await claimJobs(t.pool, t.schema, {
        queues: null,
        skipTasks: [],
        limit: 10,
        workerId: 'another',
        now: null,
      });
      assert.deepEqual(claimed, []);
      assert.equal(started.length, 1);
      release();
      await waitFor('the second job of the lock to start', async () => started.length === 2);
    });
    assert.equal(most, 1);
  });

  it('frees the abandoned runs of a dead worker, and a live worker sweeps its own that it no longer holds', async () => {
    await reset();
    await t.pool.query(`DELETE FROM ${q}.abandoned_runs`);
    await t.pool.query(
      `INSERT INTO ${q}.workers (id, host, pid, queues, concurrency, stall_timeout_ms, started_at, last_seen_at, tasks)
       VALUES ('alive', 'h', 1, NULL, 1, 30000, now(), now(), '{}')`,
    );
    await t.pool.query(
      `INSERT INTO ${q}.abandoned_runs (job_id, attempt, worker_id, queue, abandoned_at) VALUES
         (1, 1, 'ghost', 'default', now()), (2, 1, 'alive', 'default', now() - interval '1 minute'),
         (3, 1, 'alive', 'default', now() - interval '1 minute'), (4, 1, 'alive', 'default', now())`,
    );
    assert.equal(await releaseDeadWorkersRuns(t.pool, t.schema, null), 1);
    // The live worker holds job 3; job 4 was abandoned a moment ago (a claim's reply may be on its way).
    await heartbeat(t.pool, t.schema, 'alive', null, [], ['3'], 10_000);
    const { rows } = await t.pool.query(`SELECT job_id::int AS id FROM ${q}.abandoned_runs ORDER BY 1`);
    assert.deepEqual(
      rows.map((row) => row.id),
      [3, 4],
    );
    await unregisterWorker(t.pool, t.schema, 'alive');
    assert.equal((await t.pool.query(`SELECT 1 FROM ${q}.abandoned_runs`)).rowCount, 0);
  });

  it('the JSON API refuses a negative or too long pause with one line, and writes nothing', async () => {
    await reset();
    const server = await startAdminServer({ app: t.app, port: 0, token: 'review-token' });
    try {
      for (const [duration, message] of [
        ['PT-5M', /^for "PT-5M" is invalid: expected a duration/],
        ['99999999999999999d', /^pause of queue "mail" is too long/],
      ] as const) {
        const res = await fetch(`${server.url}/api/queues/mail/pause?for=${duration}`, {
          method: 'POST',
          headers: { authorization: 'Bearer review-token' },
        });
        assert.equal(res.status, 400, duration);
        assert.match(((await res.json()) as { error: string }).error, message);
      }
    } finally {
      await server.close();
    }
    assert.equal((await t.pool.query(`SELECT 1 FROM ${q}.queue_limits`)).rowCount, 0);
    assert.equal(
      (await t.pool.query(`SELECT 1 FROM ${q}.audit_log WHERE subject = 'queue:mail'`)).rowCount,
      0,
    );
  });

  it('a limited queue with room does not take the claim from a higher-priority job of another queue', async () => {
    await reset();
    await t.pool.query(
      `INSERT INTO ${q}.queue_limits (queue, concurrency, rate_max, rate_per_ms) VALUES ('bulk', 100, 50, 60000)`,
    );
    await t.pool.query(`INSERT INTO ${q}.jobs (task, queue) SELECT 'x', 'bulk' FROM generate_series(1, 20)`);
    await t.pool.query(`INSERT INTO ${q}.jobs (task, queue, priority) VALUES ('urgent', 'default', 10)`);
    const claimed = await claimLimitedJobs(t.pool, t.schema, {
      queues: null,
      skipTasks: [],
      limit: 5,
      workerId: 'w1',
      now: null,
    });
    assert.deepEqual(
      claimed.map((job) => job.queue),
      ['default', 'bulk', 'bulk', 'bulk', 'bulk'],
    );
    // The rate window counts the four bulk jobs kept, not the five picked.
    const window = await t.pool.query(`SELECT window_used FROM ${q}.queue_limits WHERE queue = 'bulk'`);
    assert.deepEqual(window.rows, [{ window_used: 4 }]);
  });
});
