/**
 * Found in review of schema/039 abandoned_runs (fixed; each failed before the fix). `jobs retry` resets a cancelled job's
 * attempts to 0, so its next run is claimed as attempt 1 again: the same (job_id, attempt)
 * as the old run, whose handler (ignoring ctx.signal) may still be running and is recorded
 * in abandoned_runs. Cancelling the new run then hits ON CONFLICT DO NOTHING: two live
 * handlers are represented by ONE row, and when the old one returns the worker deletes that
 * row (job_id, attempt, worker_id) although the new handler still runs. A concurrency-2
 * queue then runs three handlers at once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createApp } from '../../src/app.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { retryBesideItsOldRun, waitFor, withRunningWorker } from './support.js';

let t: TestApp;
let q: string;
before(async () => {
  t = await isolatedApp('revretry');
  q = `"${t.schema}"`;
});
after(async () => t.cleanup());

describe('retry of a cancelled job while its old handler runs', () => {
  it('never runs more handlers than the queue concurrency', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    let inside = 0;
    let most = 0;
    const gates = new Map<string, () => void>();
    const starts: string[] = [];
    const task = app.task('stubborn', { queue: 'two' }, async (args: { name: string }) => {
      inside += 1;
      most = Math.max(most, inside);
      const key = `${args.name}#${starts.filter((s) => s.startsWith(args.name)).length + 1}`;
      starts.push(key);
      await new Promise<void>((resolve) => gates.set(key, resolve)); // every handler waits for the test; none looks at ctx.signal
      inside -= 1;
    });
    await app.queues.configure('two', { concurrency: 2 });
    const x = await task.defer({ name: 'x' });
    assert.ok(x.enqueued);
    assert.ok(x.enqueued);
    await withRunningWorker(app, t.pool, t.schema, async () => {
      await waitFor('x run 1 to start', async () => gates.has('x#1'));
      await app.jobs.cancel([x.id]);
      await retryBesideItsOldRun(app, t.pool, t.schema, x.id); // attempts back to 0: the next run is x:1 again
      await waitFor('x run 2 to start (old run still counted: 1 of 2)', async () => gates.has('x#2'));
      await app.jobs.cancel([x.id]);
      const rows = (await t.pool.query(`SELECT job_id::text, attempt FROM ${q}.abandoned_runs`)).rows;
      // Two handlers run on, ignoring their signal; each should hold a slot.
      assert.equal(inside, 2);
      // The old run returns: its row is released (same key as the new run's).
      gates.get('x#1')!();
      await task.defer({ name: 'y1' });
      await task.defer({ name: 'y2' });
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      const left = (await t.pool.query(`SELECT job_id::text, attempt FROM ${q}.abandoned_runs`)).rows;
      for (const open of gates.values()) open();
      assert.equal(
        most,
        2,
        `at most 2 handlers at once in a concurrency-2 queue; saw ${most}. abandoned_runs after 2nd cancel: ${JSON.stringify(rows)}; after old run returned: ${JSON.stringify(left)}; starts ${starts}`,
      );
    });
  });
});
