/**
 * Review (session 10) of schema/039 abandoned_runs: the fix covers runJob.ts's timeout, not
 * runBatch.ts's. A batch task past its `timeout` whose handler ignores ctx.signal has its
 * jobs failed at once and records no abandoned run, so a concurrency-1 queue (or a lock)
 * starts its next job beside the still-running batch handler.
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
  t = await isolatedApp('revbatchto');
  q = `"${t.schema}"`;
});
after(async () => t.cleanup());

describe('a batch past its timeout whose handler ignores its signal', () => {
  it('keeps its queue slot until the handler returns (concurrency 1)', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    let inside = 0;
    let most = 0;
    let calls = 0;
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const task = app.task(
      'bulk',
      { queue: 'one', batch: { size: 1 }, timeout: { milliseconds: 200 }, retry: { attempts: 1 } },
      async (_jobs: BatchJob<{ n: number }>[]) => {
        calls += 1;
        inside += 1;
        most = Math.max(most, inside);
        if (calls === 1) await released; // never looks at ctx.signal
        inside -= 1;
      },
    );
    await app.queues.configure('one', { concurrency: 1 });
    const first = await task.defer({ n: 1 });
    assert.ok(first.enqueued);
    await task.defer({ n: 2 });
    await withRunningWorker(app, t.pool, t.schema, async () => {
      await waitFor(
        'the first job to fail by its timeout',
        async () =>
          (await t.pool.query(`SELECT 1 FROM ${q}.jobs WHERE id = $1 AND status = 'failed'`, [first.id]))
            .rowCount === 1,
      );
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      const abandoned = (await t.pool.query(`SELECT job_id::text FROM ${q}.abandoned_runs`)).rows;
      const seen = { calls, most, abandoned };
      release();
      assert.deepEqual(
        seen,
        { calls: 1, most: 1, abandoned: [{ job_id: first.id }] },
        'the second job must wait for the first batch handler to return',
      );
    });
  });
});
