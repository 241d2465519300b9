/**
 * Real worker processes (`outbatch worker --app test/fixtures/jobs-app.ts`), killed and
 * stopped as production would kill and stop them; outcomes counted in <schema>.runs.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { isolatedApp, type TestApp } from '../helpers.js';
import { createRunsTable, spawnWorker, type WorkerProcess, waitFor, workerStarted } from '../jobs/support.js';

let t: TestApp;
const alive: WorkerProcess[] = [];
before(async () => {
  t = await isolatedApp('jobs_procs');
  await createRunsTable(t.pool, t.schema);
});
after(async () => {
  for (const worker of alive) worker.child.kill('SIGKILL');
  await t.cleanup();
});

const QUICK = ['--stall-timeout', '1s', '--heartbeat-interval', '200ms', '--poll-interval', '100ms'];

function start(args: string[] = []): WorkerProcess {
  const worker = spawnWorker(t.schema, [...QUICK, ...args]);
  alive.push(worker);
  return worker;
}

const runs = async (jobId: string) =>
  (
    await t.pool.query(
      `SELECT what, attempt, pid FROM "${t.schema}".runs WHERE job_id = $1 ORDER BY attempt, what`,
      [jobId],
    )
  ).rows as { what: string; attempt: number; pid: number }[];
const jobRow = async (id: string) =>
  (await t.pool.query(`SELECT * FROM "${t.schema}".jobs WHERE id = $1`, [id])).rows[0];

describe('worker processes', () => {
  it('a worker killed with SIGKILL mid-job: another worker retries it after the stall timeout, or fails it with onStall fail', async () => {
    const first = start(['--concurrency', '4']);
    await workerStarted(t.pool, t.schema, first);
    const retried = await t.app.defer('hang-once', {});
    const failed = await t.app.defer('hang-fail', {});
    assert.ok(retried.enqueued && failed.enqueued);
    await waitFor(
      'both jobs to start',
      async () => (await runs(retried.id)).length === 1 && (await runs(failed.id)).length === 1,
    );
    first.child.kill('SIGKILL');
    await first.exited;

    const second = start(['--concurrency', '4']);
    await waitFor('the retried job to finish', async () => (await jobRow(retried.id)) === undefined);
    await waitFor(
      'the onStall fail job to be failed',
      async () => (await jobRow(failed.id))?.status === 'failed',
    );
    assert.deepEqual(
      (await runs(retried.id)).map((r) => [r.what, r.attempt, r.pid]),
      [
        ['started', 1, first.child.pid],
        ['done', 2, second.child.pid],
        ['started', 2, second.child.pid],
      ],
    );
    assert.deepEqual(
      (await runs(failed.id)).map((r) => r.pid),
      [first.child.pid],
      'not run again',
    );
    const dead = await jobRow(failed.id);
    assert.match(dead.last_error.message, /stopped heartbeating .*failed \(task onStall: fail\)/);
    second.child.kill('SIGTERM');
    assert.equal(await second.exited, 0);
  });

  it('thousands of jobs across 3 worker processes: every job runs, and runs once', async () => {
    const total = 3_000;
    const jobs = Array.from({ length: total }, (_, n) => ({ args: { n } }));
    const { pool } = await t.app.database();
    await pool.query(`DELETE FROM "${t.schema}".runs`);
    // Not a stall test: a generous stall timeout, so a starved machine's late heartbeat
    // does not hand a running job to another worker (at-least-once, by design).
    const workers = [0, 1, 2].map(() => start(['--stall-timeout', '60s']));
    // Deferred in chunks while the workers start, so claims race with inserts.
    const record = t.app.task('record', {}, async () => {});
    for (let i = 0; i < total; i += 500) await record.deferMany(jobs.slice(i, i + 500));
    await waitFor(
      'every job to run',
      async () => {
        const { rows } = await t.pool.query(
          `SELECT (SELECT count(*)::int FROM "${t.schema}".runs WHERE what = 'ran') AS ran,
                  (SELECT count(*)::int FROM "${t.schema}".jobs WHERE task = 'record') AS left`,
        );
        return rows[0].ran >= total && rows[0].left === 0;
      },
      60_000,
    );
    const { rows } = await t.pool.query(
      `SELECT count(*)::int AS ran, count(DISTINCT job_id)::int AS distinct_jobs, count(DISTINCT pid)::int AS pids
       FROM "${t.schema}".runs WHERE what = 'ran'`,
    );
    assert.equal(rows[0].ran, total, 'nothing ran twice');
    assert.equal(rows[0].distinct_jobs, total, 'nothing lost');
    for (const worker of workers) worker.child.kill('SIGTERM');
    assert.deepEqual(await Promise.all(workers.map((w) => w.exited)), [0, 0, 0]);
  });

  it('SIGTERM: stops claiming, gives handlers the shutdown timeout, returns unfinished jobs to todo uncounted, exits 0', async () => {
    const worker = start(['--shutdown-timeout', '300ms']);
    await workerStarted(t.pool, t.schema, worker);
    const hanging = await t.app.defer('hang-once', {});
    assert.ok(hanging.enqueued);
    await waitFor('the job to start', async () => (await runs(hanging.id)).length === 1);
    worker.child.kill('SIGTERM');
    assert.equal(await worker.exited, 0);
    const row = await jobRow(hanging.id);
    assert.equal(row.status, 'todo');
    assert.equal(row.attempts, 0, 'the interrupted attempt is not counted');
    assert.equal(row.worker_id, null);
    assert.match(worker.output(), /returned to todo without counting the attempt/);
    const registered = await t.pool.query(`SELECT 1 FROM "${t.schema}".workers WHERE pid = $1`, [
      worker.child.pid,
    ]);
    assert.equal(registered.rows.length, 0, 'the worker unregistered');
    await t.pool.query(`DELETE FROM "${t.schema}".jobs WHERE id = $1`, [hanging.id]);
  });
});
