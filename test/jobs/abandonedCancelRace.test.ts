/**
 * Found in review of schema/039 abandoned_runs (fixed; each failed before the fix). A cancel that commits after the
 * handler returned but before its completion is written (the completion then finds no
 * `doing` row) inserts an abandoned_runs row for a run that is already over. The worker
 * ignored the cancel NOTIFY (the run was no longer in `running`), so nothing deleted the row
 * but the heartbeat sweep, stallTimeout / 3 later: a concurrency-1 queue stayed blocked with no
 * handler running at all. Now the worker releases a cancelled run it ended lately. The race
 * is forced by holding the job's row lock while the handler returns, and cancelling in that
 * transaction. The worker's stall timeout is the tests' (an hour): the sweep cannot be what
 * frees the slot here.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createApp } from '../../src/app.js';
import { cancelJobs } from '../../src/jobs/operate.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { waitFor, withRunningWorker } from './support.js';

let t: TestApp;
let q: string;
before(async () => {
  t = await isolatedApp('revcancelrace');
  q = `"${t.schema}"`;
});
after(async () => t.cleanup());

describe('a cancel landing between a handler returning and its completion', () => {
  it('does not keep the queue slot taken once nothing runs', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    let firstStarted = false;
    let firstReturned = false;
    const first = app.task('first', { queue: 'one' }, async () => {
      firstStarted = true;
      await released;
      firstReturned = true;
    });
    let nextStarted = false;
    const next = app.task('next', { queue: 'one' }, async () => {
      nextStarted = true;
    });
    await app.queues.configure('one', { concurrency: 1 });
    const a = await first.defer({});
    assert.ok(a.enqueued);
    await withRunningWorker(app, t.pool, t.schema, async () => {
      await waitFor('the first job to start', async () => firstStarted);
      await next.defer({});
      const client = await t.pool.connect();
      try {
        await client.query('BEGIN');
        await client.query(`SELECT 1 FROM ${q}.jobs WHERE id = $1 FOR UPDATE`, [a.id]);
        release(); // the handler returns; its completion waits on our row lock
        await waitFor('the handler to return', async () => firstReturned);
        await new Promise((resolve) => setTimeout(resolve, 300));
        assert.deepEqual(await cancelJobs(client, t.schema, [a.id], { actor: 'review', host: 'h' }), [a.id]);
        await client.query('COMMIT');
      } finally {
        client.release();
      }
      await waitFor('the next job of the concurrency-1 queue to start', async () => nextStarted);
      const { rows } = await t.pool.query(`SELECT 1 FROM ${q}.abandoned_runs`);
      assert.equal(rows.length, 0);
    });
  });
});
