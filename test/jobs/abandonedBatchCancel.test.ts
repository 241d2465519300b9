/**
 * Found in review of schema/039 abandoned_runs (fixed; each failed before the fix). Cancelling a job of a batch that is
 * running inserts its abandoned_runs row (operate.ts), but the worker leaves a running
 * batch's job to the call (cancelRun: not in `running`, not waiting in its batch) and never
 * deletes that row when the batch handler returns. Only the heartbeat sweep frees it,
 * stallTimeout / 3 after the cancel (10 s with the default 30 s stall timeout), so the queue
 * slot stays taken long after the handler returned, against "then the slot is freed
 * promptly" (docs/limits.md: "The worker deletes the row when the handler returns").
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createApp } from '../../src/app.js';
import type { BatchJob } from '../../src/jobs/task.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { waitFor, withRunningWorker } from './support.js';

let t: TestApp;
let q: string;
before(async () => {
  t = await isolatedApp('revbatchcancel');
  q = `"${t.schema}"`;
});
after(async () => t.cleanup());

describe('a job of a running batch, cancelled', () => {
  it('frees its queue slot soon after the batch handler returns', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    let calls = 0;
    const bulk = app.task('bulk', { queue: 'one', batch: { size: 1 } }, async (_jobs: BatchJob<object>[]) => {
      calls += 1;
      await released; // returns when the test says, signal or not
    });
    let nextStarted = false;
    const next = app.task('next', { queue: 'one' }, async () => {
      nextStarted = true;
    });
    await app.queues.configure('one', { concurrency: 1 });
    const first = await bulk.defer({});
    assert.ok(first.enqueued);
    await withRunningWorker(app, t.pool, t.schema, async () => {
      await waitFor('the batch to start', async () => calls === 1);
      await app.jobs.cancel([first.id]);
      await next.defer({});
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.equal(nextStarted, false, 'the running batch holds the only slot');
      release();
      // The tests' stall timeout is an hour: the heartbeat sweep cannot be what frees it.
      await waitFor('the next job of the concurrency-1 queue to start', async () => nextStarted);
      const { rows } = await t.pool.query(`SELECT 1 FROM ${q}.abandoned_runs`);
      assert.equal(rows.length, 0);
    });
  });
});
