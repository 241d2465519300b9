import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createApp } from '../../src/app.js';
import { claimJobs } from '../../src/jobs/claim.js';
import { recoverStalledJobs } from '../../src/jobs/recover.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { waitFor } from './support.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('recover');
  t.app.task('sync', {}, async () => {});
});
after(() => t.cleanup());

describe('recovery of stalled jobs sharing a queueing lock', () => {
  // Found by the lock property test: both used to go back to todo in one statement and
  // hit the one-todo-per-queueing-lock index, so recovery failed forever.
  it('returns the newest to todo and fails the others as superseded', async () => {
    const first = await t.app.defer('sync', {}, { queueingLock: 'customer-7' });
    await claimJobs(t.pool, t.schema, { skipTasks: [], queues: null, limit: 1, workerId: 'dead', now: null });
    const second = await t.app.defer('sync', {}, { queueingLock: 'customer-7' });
    await claimJobs(t.pool, t.schema, { skipTasks: [], queues: null, limit: 1, workerId: 'dead', now: null });
    const recovered = await recoverStalledJobs(t.pool, t.schema, null);
    const byId = Object.fromEntries(recovered.map((job) => [job.id, [job.status, job.reason]]));
    assert.ok(first.enqueued && second.enqueued);
    assert.deepEqual(byId, { [first.id]: ['failed', 'superseded'], [second.id]: ['todo', 'retry'] });
  });
});

describe('recovery by a worker whose own heartbeat is late', () => {
  // Found with 8 test files on 2 cores: a starved worker's heartbeat lagged past its stall
  // timeout and its own recovery pass handed its running jobs to itself again.
  it('leaves its own running jobs alone; any other worker recovers them', async () => {
    const job = await t.app.defer('sync', {}, { queue: 'late' });
    assert.ok(job.enqueued);
    await t.pool.query(
      `INSERT INTO "${t.schema}".workers (id, host, pid, queues, concurrency, stall_timeout_ms, last_seen_at)
       VALUES ('slow', 'host', 1, NULL, 1, 1000, now() - interval '1 minute')`,
    );
    await claimJobs(t.pool, t.schema, {
      skipTasks: [],
      queues: ['late'],
      limit: 1,
      workerId: 'slow',
      now: null,
    });
    assert.deepEqual(await recoverStalledJobs(t.pool, t.schema, null, 'slow'), []);
    const recovered = await recoverStalledJobs(t.pool, t.schema, null, 'other');
    assert.deepEqual(
      recovered.map((r) => [r.id, r.status, r.reason]),
      [[job.id, 'todo', 'retry']],
    );
  });
});

describe('recovery while an open transaction has deferred a job with a dirty job’s queueing lock', () => {
  // Noted in review: sending the dirty job back to todo waits for that transaction (the
  // unique index of one todo per queueing lock), the worker's lock_timeout ended the whole
  // recovery statement, and every other dirty job stayed `doing` until that transaction
  // ended, pass after pass.
  it('recovers the other dirty jobs now, and that one once the transaction ends', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    const ran: string[] = [];
    app.task('held', {}, async (_args, ctx) => {
      ran.push(ctx.job.id);
    });
    const locked = await app.defer('held', {}, { queueingLock: 'held-lock' });
    const free = await app.defer('held', {});
    assert.ok(locked.enqueued && free.enqueued);
    const claimed = await claimJobs(t.pool, t.schema, {
      skipTasks: ['sync'],
      queues: null,
      limit: 10,
      workerId: 'gone-with-lock', // no workers row: dead
      now: null,
    });
    assert.deepEqual(claimed.map((job) => job.id).sort(), [locked.id, free.id].sort());
    const caller = await t.pool.connect();
    const controller = new AbortController();
    let running: Promise<void> | undefined;
    try {
      await caller.query('BEGIN');
      const waiting = await app.defer('held', {}, { queueingLock: 'held-lock', client: caller });
      assert.ok(waiting.enqueued);
      running = app.run({
        heartbeatInterval: 100,
        recoverInterval: 100,
        stallTimeout: 60_000,
        signal: controller.signal,
      });
      await waitFor('the dirty job without a queueing lock to be recovered and run', async () =>
        ran.includes(free.id),
      );
      const status = async (id: string) =>
        (await t.pool.query(`SELECT status FROM "${t.schema}".jobs WHERE id = $1`, [id])).rows[0]?.status;
      assert.equal(await status(locked.id), 'doing', 'held back while the transaction is open');
      await caller.query('COMMIT');
      // Then the job that waited runs, and the held-back one is recovered: superseded by it
      // if recovery comes first, else back to todo and run after it.
      await waitFor('the waiting job to run', async () => ran.includes(waiting.id));
      await waitFor('the held-back job to be recovered', async () => (await status(locked.id)) !== 'doing');
      const after = (
        await t.pool.query(`SELECT status, last_error FROM "${t.schema}".jobs WHERE id = $1`, [locked.id])
      ).rows[0];
      if (after?.status === 'failed') {
        assert.match(after.last_error.message, /superseded by a waiting job with the same queueing lock/);
      } else {
        await waitFor('the held-back job to run again', async () => ran.includes(locked.id));
      }
    } finally {
      await caller.query('ROLLBACK').catch(() => {});
      caller.release();
      controller.abort();
      await running;
      await app.close();
    }
  });
});
