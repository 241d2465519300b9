/**
 * Found in review of f181ed3 (endedHere; fixed, failed before). The old code released a cancel's row for a run that had
 * ended here ONCE (recentlyEnded.delete: "a second notice for it must not free another
 * run"). endedHere() has no such guard: it answers true for as long as the outcome is
 * unwritten or in the last 8 written batches, so every notice of the same "<id>:<attempt>"
 * frees another abandoned_runs row of that key on this worker. A second notice is what
 * happens when the heartbeat (sent while the run was still in `running`) and the NOTIFY both
 * report the cancel after the handler returned; it is simulated here by repeating the
 * NOTIFY payload. With a retried job (attempts reset to 0) the other row of the same key is
 * an OLD run whose handler still runs: its slot is freed and a concurrency-2 queue runs 3.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createApp } from '../../src/app.js';
import { cancelJobs } from '../../src/jobs/operate.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { retryBesideItsOldRun, waitFor, withRunningWorker } from './support.js';

let t: TestApp;
let q: string;
before(async () => {
  t = await isolatedApp('rev2twice');
  q = `"${t.schema}"`;
});
after(async () => t.cleanup());

describe('a second notice of a cancel for a run that ended here', () => {
  it('does not free the slot of an older run of the same key still going', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    let inside = 0;
    let most = 0;
    const gates = new Map<string, () => void>();
    const returned = new Set<string>();
    const starts: string[] = [];
    const task = app.task('stubborn', { queue: 'two' }, async (args: { name: string }) => {
      inside += 1;
      most = Math.max(most, inside);
      const key = `${args.name}#${starts.filter((s) => s.startsWith(args.name)).length + 1}`;
      starts.push(key);
      await new Promise<void>((resolve) => gates.set(key, resolve)); // ignores ctx.signal
      inside -= 1;
      returned.add(key);
    });
    await app.queues.configure('two', { concurrency: 2 });
    const x = await task.defer({ name: 'x' });
    assert.ok(x.enqueued);
    const count = async () =>
      Number((await t.pool.query(`SELECT count(*) FROM ${q}.abandoned_runs`)).rows[0].count);
    await withRunningWorker(app, t.pool, t.schema, async () => {
      await waitFor('x run 1 to start', async () => gates.has('x#1'));
      await app.jobs.cancel([x.id]); // x#1 ignores its signal: abandoned, one row
      await retryBesideItsOldRun(app, t.pool, t.schema, x.id); // attempts back to 0: the next run is x:1 again
      await waitFor('x run 2 to start', async () => gates.has('x#2'));
      // x#2 returns; its completion waits on our row lock; the cancel commits in between.
      const client = await t.pool.connect();
      try {
        await client.query('BEGIN');
        await client.query(`SELECT 1 FROM ${q}.jobs WHERE id = $1 FOR UPDATE`, [x.id]);
        gates.get('x#2')!();
        await waitFor('x#2 to return', async () => returned.has('x#2'));
        await new Promise((resolve) => setTimeout(resolve, 300));
        assert.deepEqual(await cancelJobs(client, t.schema, [x.id], { actor: 'review', host: 'h' }), [x.id]);
        await client.query('COMMIT');
      } finally {
        client.release();
      }
      // The NOTIFY frees the row of the run that ended (correct): x#1's run keeps one row.
      await waitFor('the ended run to be released', async () => (await count()) === 1);
      // The same cancel reported a second time (heartbeat reply + NOTIFY).
      const attempt = (await t.pool.query(`SELECT attempts FROM ${q}.jobs WHERE id = $1`, [x.id])).rows[0]
        .attempts;
      await t.pool.query(`SELECT pg_notify($1, $2)`, [`${t.schema}_cancel`, `${x.id}:${attempt}`]);
      await new Promise((resolve) => setTimeout(resolve, 500));
      const left = await count();
      await task.defer({ name: 'y1' });
      await task.defer({ name: 'y2' });
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      for (const open of gates.values()) open();
      assert.deepEqual(
        { rowsLeft: left, mostAtOnce: most },
        { rowsLeft: 1, mostAtOnce: 2 },
        `x#1 still runs: its row must stay, and a concurrency-2 queue runs at most 2; starts ${starts}`,
      );
    });
  });
});
