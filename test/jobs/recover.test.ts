import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { claimJobs } from '../../src/jobs/claim.js';
import { recoverStalledJobs } from '../../src/jobs/recover.js';
import { isolatedApp, type TestApp } from '../helpers.js';

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
    await claimJobs(t.pool, t.schema, { tasks: null, queues: null, limit: 1, workerId: 'dead', now: null });
    const second = await t.app.defer('sync', {}, { queueingLock: 'customer-7' });
    await claimJobs(t.pool, t.schema, { tasks: null, queues: null, limit: 1, workerId: 'dead', now: null });
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
      tasks: null,
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
