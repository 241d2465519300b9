/**
 * How an idle worker waits: for a NOTIFY or its poll tick, never by claiming in a loop.
 * (It did loop: every empty claim started the next one, ~8,000 a second per worker.)
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type App, createApp } from '../../src/app.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('jobs_wake');
});
after(async () => t.cleanup());

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs `app`'s worker with a 10-minute poll tick (so only the wake-up under test can start a
 * job in time) around `body`, which starts once the worker has finished its start-up claims
 * and published itself idle.
 */
async function whileIdleWorkerRuns(app: App, concurrency: number, body: () => Promise<void>): Promise<void> {
  const controller = new AbortController();
  const running = app.run({ concurrency, pollInterval: { minutes: 10 }, signal: controller.signal });
  try {
    await waitFor('the worker to be idle', async () => {
      const { rows } = await t.pool.query(`SELECT count(*)::int AS n FROM "${t.schema}".workers WHERE idle`);
      return rows[0].n > 0;
    });
    await body();
  } finally {
    controller.abort();
    await running;
    await app.close();
  }
}

/** Scans of the jobs table so far, as PostgreSQL's statistics count them (flushed when a backend exits). */
async function jobsTableScans(): Promise<number> {
  const { rows } = await t.pool.query(
    `SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) AS scans
     FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'jobs'`,
    [t.schema],
  );
  return Number(rows[0].scans);
}

describe('an idle worker', () => {
  it('claims once per poll tick, not in a loop', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    app.task('never-deferred', {}, async () => {});
    const before = await jobsTableScans();
    const controller = new AbortController();
    const running = app.run({ concurrency: 2, pollInterval: 250, signal: controller.signal });
    await sleep(3_000);
    controller.abort();
    await running;
    await app.close(); // its backends exit, which flushes their statistics
    const scans = await waitFor('the worker backends to flush their statistics', async () => {
      const now = await jobsTableScans();
      return now > before ? now - before : 0;
    });
    // About 12 poll ticks, plus start-up and a few maintenance passes; looping was ~20,000.
    assert.ok(scans < 300, `an idle worker scanned the jobs table ${scans} times in 3 s`);
  });

  it('runs a deferred job on its NOTIFY, without waiting for a poll tick', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    let ran = 0;
    const task = app.task('woken', {}, async () => {
      ran += 1;
    });
    await whileIdleWorkerRuns(app, 2, async () => {
      await sleep(200);
      for (let i = 0; i < 3; i += 1) {
        await task.defer({ i });
        await waitFor(`job ${i + 1} to run (the poll tick is 10 minutes away)`, async () => ran === i + 1);
        await sleep(100);
      }
      assert.equal(ran, 3);
    });
  });

  it('claims a job waiting for a lock as soon as the holder finishes, without waiting for a poll tick', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    const order: string[] = [];
    const task = app.task('locked', {}, async (args: { name: string }) => {
      order.push(args.name);
      await sleep(100);
    });
    await whileIdleWorkerRuns(app, 4, async () => {
      // One NOTIFY wakes the worker; b, c and d then wait for the lock, which no NOTIFY announces.
      for (const name of ['a', 'b', 'c', 'd']) await task.defer({ name }, { lock: 'account:1' });
      await waitFor(
        'the four same-lock jobs to run (the poll tick is 10 minutes away)',
        async () => order.length === 4,
      );
      assert.deepEqual(order, ['a', 'b', 'c', 'd']);
    });
  });

  it('runs a job this process deferred for a moment later when it is due, and a retry when its backoff ends', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    let ran = 0;
    let attempts = 0;
    const later = app.task('later', {}, async () => {
      ran += 1;
    });
    const flaky = app.task(
      'flaky',
      { retry: { attempts: 3, backoff: { initial: 200, factor: 1 } } },
      async () => {
        attempts += 1;
        if (attempts < 3) throw new Error(`attempt ${attempts} fails`);
      },
    );
    await whileIdleWorkerRuns(app, 2, async () => {
      await later.defer({}, { delay: 300 });
      await waitFor('the delayed job to run (the poll tick is 10 minutes away)', async () => ran === 1);
      await flaky.defer({});
      await waitFor('the third attempt (the poll tick is 10 minutes away)', async () => attempts === 3);
      // Succeeded rows are deleted (no keepSucceededFor): the job is gone once it passed.
      await waitFor('the flaky job to succeed', async () => {
        const { rows } = await t.pool.query(
          `SELECT count(*)::int AS n FROM "${t.schema}".jobs WHERE task = 'flaky'`,
        );
        return rows[0].n === 0;
      });
      assert.equal(attempts, 3);
    });
  });

  it('runs a follow-up a handler deferred with ctx.defer for a moment later when it is due', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    let followed = 0;
    app.task('follow-up', {}, async () => {
      followed += 1;
    });
    app.task('leader', {}, async (_args, ctx) => {
      await ctx.defer('follow-up', {}, { delay: 300 });
    });
    await whileIdleWorkerRuns(app, 2, async () => {
      await app.defer('leader', {});
      await waitFor('the follow-up (the poll tick is 10 minutes away)', async () => followed === 1);
    });
  });
});
