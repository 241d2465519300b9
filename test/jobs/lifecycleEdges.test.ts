/**
 * The job lifecycle's edges, found by a hostile review (docs/lifecycle.md): deferAndWait on
 * a batch task, a cancel of a batch job not started yet, a progress value PostgreSQL's
 * `real` cannot hold, and a deferAndWait with `onConflict: 'ignore'` whose waiting job is
 * claimed while the wait marks it. Real workers; outcomes counted in rows and runs.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type App, createApp } from '../../src/app.js';
import { AlreadyEnqueued, WaitTimeoutError } from '../../src/errors.js';
import { purgeSucceeded } from '../../src/jobs/maintenance.js';
import { startFaultProxy } from '../faultProxy.js';
import { captureLog, databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { gate, waitFor, withRunningWorker } from './support.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('lifecycle_edges');
  await t.pool.query(`CREATE TABLE "${t.schema}".runs (job text NOT NULL)`);
});
after(async () => t.cleanup());

const q = () => `"${t.schema}"`;

const recordRun = (jobId: string) => t.pool.query(`INSERT INTO ${q()}.runs VALUES ($1)`, [jobId]);
const runs = async (jobId: string) =>
  Number((await t.pool.query(`SELECT count(*) FROM ${q()}.runs WHERE job = $1`, [jobId])).rows[0].count);
const row = async (id: string) =>
  (await t.pool.query(`SELECT * FROM ${q()}.jobs WHERE id = $1`, [id])).rows[0] as
    | { status: string; result: unknown; progress: number | null; awaited: boolean }
    | undefined;

const newApp = (options: Record<string, unknown> = {}) =>
  createApp({ databaseUrl: databaseUrl(), schema: t.schema, ...options });

/** Runs `app`'s worker around `body`, then stops it gracefully. */
const withWorker = (app: App, body: () => Promise<void>, options: Record<string, unknown> = {}) =>
  withRunningWorker(app, t.pool, t.schema, body, options);

async function deferred(app: App, task: string, args: unknown = {}, options = {}): Promise<string> {
  const result = await app.defer(task, args, options);
  assert.ok(result.enqueued);
  return result.id;
}

describe('batch tasks and the lifecycle', () => {
  it('deferAndWait on a batch task that keeps no succeeded jobs resolves (the awaited row is kept)', async () => {
    const app = newApp();
    app.task('bulk-awaited', { batch: { size: 5, maxWait: 50 } }, async (jobs) => {
      for (const job of jobs) await recordRun(job.id);
    });
    await withWorker(app, async () => {
      const waits = [0, 1, 2].map(() => app.deferAndWait('bulk-awaited', {}, { timeout: { seconds: 30 } }));
      // Before the fix the batch's completion deleted the awaited rows: every wait rejected
      // with "job … is gone".
      assert.deepEqual(await Promise.all(waits), [null, null, null]);
    });
    const rows = (
      await t.pool.query(`SELECT status, keep_until FROM ${q()}.jobs WHERE task = 'bulk-awaited'`)
    ).rows;
    assert.equal(rows.length, 3);
    for (const kept of rows) {
      assert.equal(kept.status, 'succeeded');
      assert.ok(kept.keep_until instanceof Date);
    }
  });

  it('a batch job cancelled while it is collected for its batch is dropped, never handed to the handler', async () => {
    const { log, lines } = captureLog();
    const app = newApp({ logger: log });
    // A batch of two that waits a minute for its second job: the first sits collected.
    app.task('bulk-cancel', { batch: { size: 2, maxWait: { minutes: 1 } } }, async (jobs) => {
      for (const job of jobs) await recordRun(job.id);
    });
    await withWorker(app, async () => {
      const first = await deferred(app, 'bulk-cancel');
      await waitFor('the first job to be claimed', async () => (await row(first))?.status === 'doing');
      assert.deepEqual((await app.jobs.cancel([first])).done, [first]);
      await waitFor('the worker to drop the cancelled job', async () =>
        lines.some((line) => line.includes('job cancelled before it started')),
      );
      const second = await deferred(app, 'bulk-cancel');
      const third = await deferred(app, 'bulk-cancel');
      await waitFor(
        'the two later jobs to run',
        async () => (await runs(second)) + (await runs(third)) === 2,
      );
      assert.equal(await runs(first), 0, 'the cancelled job reached the handler');
      assert.equal((await row(first))!.status, 'cancelled');
    });
  });
});

describe('progress values PostgreSQL cannot store as real', () => {
  it('a tiny value (1e-50) is stored as 0 and does not take the other jobs’ reports down with it', async () => {
    const app = newApp();
    const finish = gate();
    const reported = new Set<string>();
    app.task('tiny-progress', { keepSucceededFor: { minutes: 5 } }, async (args: { value: number }, ctx) => {
      // Reported until the end, so the two jobs' reports share the worker's writes.
      while (!ctx.signal.aborted) {
        ctx.progress(args.value);
        reported.add(ctx.job.id);
        if (await Promise.race([finish.opened.then(() => true), new Promise((r) => setTimeout(r, 20))]))
          break;
      }
    });
    await withWorker(
      app,
      async () => {
        const tiny = await deferred(app, 'tiny-progress', { value: 1e-50 });
        const normal = await deferred(app, 'tiny-progress', { value: 40 });
        await waitFor('both jobs to report', async () => reported.size === 2);
        // Before the fix: "1e-50" is out of range for type real, the whole write refused and
        // every report in it dropped, again at each write.
        await waitFor(
          'the normal job’s progress to be written',
          async () => (await row(normal))?.progress === 40,
        );
        await waitFor('the tiny job’s progress to be written', async () => (await row(tiny))?.progress === 0);
        finish.open();
      },
      { concurrency: 2 },
    );
  });
});

describe("deferAndWait with onConflict 'ignore'", () => {
  it('a waiting job claimed while the wait marks it: the wait still gets a result, not "gone"', async () => {
    // A test-only gate: the wait's "mark awaited" statement blocks on an advisory lock the
    // test holds, so a worker claims (and is about to complete) the job between the defer
    // and the mark — the window a busy queue hits by chance.
    await t.pool.query(`
      CREATE FUNCTION ${q()}.gate_awaited() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF current_query() LIKE '%SET awaited = true%' THEN PERFORM pg_advisory_xact_lock(424242); END IF;
        RETURN NULL;
      END $$;
      CREATE TRIGGER gate_awaited BEFORE UPDATE ON ${q()}.jobs
      FOR EACH STATEMENT EXECUTE FUNCTION ${q()}.gate_awaited();`);
    const holder = await t.pool.connect();
    const app = newApp();
    const proceed = gate();
    app.task('ignored-race', {}, async (_args, ctx) => {
      await recordRun(ctx.job.id);
      await proceed.opened;
      return `result of ${ctx.job.id}`;
    });
    try {
      const existing = await deferred(app, 'ignored-race', {}, { queueingLock: 'race' });
      await holder.query('SELECT pg_advisory_lock(424242)');
      const waiting = app.deferAndWait<string>(
        'ignored-race',
        {},
        {
          queueingLock: 'race',
          onConflict: 'ignore',
          timeout: { seconds: 30 },
        },
      );
      waiting.catch(() => {}); // awaited below
      await waitFor('the wait to block on the gate', async () => {
        const { rows } = await t.pool.query(
          `SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND query LIKE '%SET awaited = true%'`,
        );
        return rows.length > 0;
      });
      await withWorker(app, async () => {
        await waitFor('the existing job to run', async () => (await runs(existing)) === 1);
        await holder.query('SELECT pg_advisory_unlock(424242)');
        proceed.open();
        // Before the fix the mark landed on the running job, which its worker (having
        // claimed it unmarked) deleted at success: the wait rejected with "gone".
        const result = await waiting;
        assert.match(result, /^result of \d+$/);
      });
    } finally {
      holder.release();
      await t.pool.query(`DROP TRIGGER gate_awaited ON ${q()}.jobs; DROP FUNCTION ${q()}.gate_awaited()`);
    }
  });
});

describe('keep times in one completion batch', () => {
  it('an awaited job completed in the same batch as a job of its task not awaited keeps its own keep time', async () => {
    const app = newApp();
    const finish = gate();
    const started = new Set<string>();
    app.task('mixed-keep', { keepSucceededFor: { seconds: 10 } }, async (_a, ctx) => {
      started.add(ctx.job.id);
      await finish.opened; // both finish in one tick: their completions go out in one statement
      return ctx.job.id;
    });
    // The job nobody awaits is claimed first (higher priority), so its completion comes
    // first in the batch: before the fix the batch's keep time per task was the first
    // completion's, and the awaited row was kept 10 s instead of an hour.
    const plain = await deferred(app, 'mixed-keep', {}, { priority: 10 });
    const waiting = app.deferAndWait<string>('mixed-keep', {}, { timeout: { seconds: 30 } });
    waiting.catch(() => {}); // awaited below
    await withWorker(
      app,
      async () => {
        await waitFor('both jobs to start', async () => started.size === 2);
        finish.open();
        const awaitedId = await waiting;
        const keeps = (
          await t.pool.query(
            `SELECT id::text, extract(epoch FROM keep_until - finished_at)::float8 AS keep_s FROM ${q()}.jobs WHERE task = 'mixed-keep'`,
          )
        ).rows as { id: string; keep_s: number }[];
        const keepOf = new Map(keeps.map((k) => [k.id, k.keep_s]));
        assert.equal(keepOf.get(plain), 10);
        assert.equal(keepOf.get(awaitedId), 3600);
      },
      { concurrency: 2 },
    );
  });
});

describe('deferAndWait on a connection that goes silent', () => {
  it('a half-open connection under the wait: its timeout still ends it', async () => {
    const proxy = await startFaultProxy(databaseUrl());
    // No worker: the job never ends, only the wait's timeout can.
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema });
    try {
      const waiting = app.deferAndWait('never-runs', {}, { timeout: { seconds: 3 }, pollInterval: 200 });
      const settled = waiting.then(
        () => 'resolved',
        (error: unknown) => error,
      );
      await waitFor(
        'the job to be deferred',
        async () => (await t.pool.query(`SELECT 1 FROM ${q()}.jobs WHERE task = 'never-runs'`)).rowCount,
      );
      // Every connection of the app goes silent, without closing: the next look at the row
      // gets no answer. Before the fix that look waited for TCP keepalive (minutes), far
      // past the wait's 3 s timeout.
      assert.ok(proxy.halfOpen() > 0);
      let guard: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        settled,
        new Promise((resolve) => {
          guard = setTimeout(() => resolve('still waiting 30 s after a 3 s timeout'), 30_000);
        }),
      ]);
      clearTimeout(guard);
      assert.ok(outcome instanceof WaitTimeoutError, String(outcome));
    } finally {
      await proxy.close();
      await app.close();
    }
  });

  it('a look at the row cut mid-wait (connection lost) does not end the wait: the result still comes', async () => {
    const proxy = await startFaultProxy(databaseUrl());
    const waiter = createApp({ databaseUrl: proxy.url, schema: t.schema });
    const worker = newApp();
    const finish = gate();
    const started = gate();
    worker.task('after-a-blip', {}, async () => {
      started.open();
      await finish.opened;
      return 'after the blip';
    });
    try {
      await withWorker(worker, async () => {
        const waiting = waiter.deferAndWait(
          'after-a-blip',
          {},
          { timeout: { seconds: 30 }, pollInterval: 100 },
        );
        const settled = waiting.then(
          (value) => value,
          (error: unknown) => error,
        );
        await started.opened;
        // The next look at the row never reaches the server: its connection is closed.
        const { fired } = proxy.addRule({ match: "last_error ->> 'message' AS error", action: 'cut' });
        await fired;
        finish.open();
        // Before the fix the cut look rejected the wait with the connection error.
        assert.equal(await settled, 'after the blip');
      });
    } finally {
      await proxy.close();
      await waiter.close();
    }
  });
});

describe('results PostgreSQL cannot store', () => {
  it('a result whose toJSON gives a NUL fails the attempt with one line and is retried, like any non-JSON result', async () => {
    const app = newApp();
    app.task(
      'nul-result',
      { keepSucceededFor: { minutes: 5 }, retry: { attempts: 2, backoff: { initial: 10 } } },
      async (_a, ctx) => {
        await recordRun(ctx.job.id);
        return { note: { toJSON: () => 'bad\u0000text' } };
      },
    );
    await withWorker(app, async () => {
      const id = await deferred(app, 'nul-result');
      await waitFor('the job to fail for good', async () => (await row(id))?.status === 'failed');
      // Before the fix the completion statement was refused (jsonb takes no \u0000): the job
      // failed for good at once, "outcome could not be recorded", its retry never run.
      assert.equal(await runs(id), 2);
      const job = (await t.pool.query(`SELECT last_error FROM ${q()}.jobs WHERE id = $1`, [id])).rows[0];
      assert.match(
        job.last_error.message,
        /^the return value of task "nul-result"\.note contains a NUL character/,
      );
    });
  });
});

describe('purging awaited rows', () => {
  it('the purge of kept awaited rows sends no NOTIFY: their waiters were told when the jobs ended', async () => {
    const listener = await t.pool.connect();
    const heard: string[] = [];
    listener.on('notification', (note) => heard.push(note.payload ?? ''));
    try {
      await listener.query(`LISTEN "${t.schema}_done"`);
      // 200 awaited jobs that succeeded and whose keep time is over.
      await t.pool.query(
        `INSERT INTO ${q()}.jobs (task, status, awaited, finished_at, keep_until)
         SELECT 'purged-awaited', 'succeeded', true, now(), now() - interval '1 minute' FROM generate_series(1, 200)`,
      );
      assert.equal(await purgeSucceeded(t.pool, t.schema, null), 200);
      await t.pool.query(`SELECT pg_notify($1, 'marker')`, [`${t.schema}_done`]);
      await waitFor('the marker notification', async () => heard.includes('marker'));
      // Before the fix: one NOTIFY per purged row (200), in the purge's transaction, which
      // took the cluster-wide notify lock through its commit, for waiters long gone.
      assert.deepEqual(heard, ['marker']);
    } finally {
      await listener.query(`UNLISTEN *`);
      listener.release();
    }
  });
});

describe("deferAndWait with onConflict 'ignore' and another task's job", () => {
  it('a queueing lock held by a waiting job of another task is refused: no wait for a result of the wrong task', async () => {
    const app = newApp();
    const other = await deferred(app, 'lock-holder', {}, { queueingLock: 'shared-lock' });
    try {
      // Before the fix the wait marked job `other` and would have resolved with its result.
      await assert.rejects(
        app.deferAndWait(
          'lock-waiter',
          {},
          { queueingLock: 'shared-lock', onConflict: 'ignore', timeout: 5_000 },
        ),
        (error: unknown) =>
          error instanceof AlreadyEnqueued &&
          error.existingTask === 'lock-holder' &&
          /for task "lock-holder": deferAndWait with onConflict 'ignore' waits for only a waiting job of the same task/.test(
            error.message,
          ),
      );
      assert.equal((await row(other))!.awaited, false, 'the mark was rolled back');
      const jobs = await t.pool.query(`SELECT 1 FROM ${q()}.jobs WHERE task = 'lock-waiter'`);
      assert.equal(jobs.rowCount, 0);
    } finally {
      await app.close();
    }
  });
});
