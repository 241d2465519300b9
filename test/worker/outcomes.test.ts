import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { type App, createApp } from '../../src/app.js';
import { recoverStalledJobs } from '../../src/jobs/recover.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('jobs_outcomes');
});
after(async () => t.cleanup());

const FAST = { pollInterval: 20, heartbeatInterval: 100, recoverInterval: 100 };
const job = async (id: string) =>
  (await t.pool.query(`SELECT * FROM "${t.schema}".jobs WHERE id = $1`, [id])).rows[0] as
    | Record<string, unknown>
    | undefined;

async function withWorker(app: App, body: () => Promise<void>, options = {}) {
  const controller = new AbortController();
  const running = app.run({ ...FAST, stallTimeout: 3_600_000, ...options, signal: controller.signal });
  try {
    await body();
  } finally {
    controller.abort();
    await running;
  }
}

describe('outcomes', () => {
  it('retries on the backoff schedule (injected clock), then dead-letters with message, stack and history', async () => {
    let current = new Date(Date.now() + 60_000);
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema, clock: { now: () => current } });
    app.task(
      'flaky',
      { retry: { attempts: 3, backoff: { initial: { seconds: 10 }, factor: 3, jitter: 0 } } },
      async (_args, ctx) => {
        throw new Error(`nope #${ctx.job.attempt}`);
      },
    );
    const deferred = await app.defer('flaky', {});
    assert.ok(deferred.enqueued);
    const attemptDone = (attempts: number, status: string) => () =>
      waitFor(`attempt ${attempts}`, async () => {
        const row = await job(deferred.id);
        return row && row.attempts === attempts && row.status === status ? row : undefined;
      });
    await withWorker(app, async () => {
      const first = await attemptDone(1, 'todo')();
      assert.equal((first.run_at as Date).getTime(), current.getTime() + 10_000);
      current = new Date(current.getTime() + 10_000);
      const second = await attemptDone(2, 'todo')();
      assert.equal((second.run_at as Date).getTime(), current.getTime() + 30_000);
      current = new Date(current.getTime() + 30_000);
      await attemptDone(3, 'failed')();
    });
    const dead = (await job(deferred.id))!;
    const lastError = dead.last_error as { message: string; stack: string };
    assert.equal(lastError.message, 'nope #3');
    assert.match(lastError.stack, /Error: nope #3\n\s+at /);
    const history = dead.errors as { message: string; attempt: number }[];
    assert.deepEqual(
      history.map((e) => [e.attempt, e.message]),
      [
        [1, 'nope #1'],
        [2, 'nope #2'],
        [3, 'nope #3'],
      ],
    );
    const stats = await app.jobs.stats();
    const flaky = stats.find((s) => s.task === 'flaky')!;
    assert.deepEqual([flaky.retried, flaky.failed, flaky.now.failed], [2, 1, 1]);
    await app.close();
  });

  it('handles retryOn, non-Error throws and timeouts without stopping the worker', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    let lateRejections = 0;
    app.task('picky', { retry: { attempts: 5, retryOn: (e) => !(e instanceof TypeError) } }, async () => {
      throw new TypeError('not worth retrying');
    });
    app.task('weird', { retry: { attempts: 1 } }, async () => {
      throw 'a plain string';
    });
    app.task('stubborn', { timeout: 50, retry: { attempts: 1 } }, async () => {
      // Ignores its signal and rejects long after the timeout.
      await new Promise((resolve) => setTimeout(resolve, 300));
      lateRejections += 1;
      throw new Error('too late');
    });
    app.task('fine', {}, async () => {});
    const ids: Record<string, string> = {};
    for (const name of ['picky', 'weird', 'stubborn']) {
      const result = await app.defer(name, {});
      assert.ok(result.enqueued);
      ids[name] = result.id;
    }
    await withWorker(app, async () => {
      for (const name of Object.keys(ids)) {
        await waitFor(`${name} to fail`, async () => (await job(ids[name]!))?.status === 'failed');
      }
      await waitFor('the late rejection', async () => lateRejections === 1);
      // Still working after all that:
      const fine = await app.defer('fine', {});
      assert.ok(fine.enqueued);
      await waitFor('a healthy job', async () => (await job(fine.id)) === undefined);
    });
    const message = async (name: string) =>
      ((await job(ids[name]!))!.last_error as { message: string }).message;
    assert.equal((await job(ids.picky!))!.attempts, 1, 'retryOn said no: one attempt');
    assert.equal(await message('picky'), 'not worth retrying');
    assert.equal(await message('weird'), 'handler threw a non-Error: a plain string');
    assert.equal(await message('stubborn'), 'job exceeded its timeout of 50 ms');
    await app.close();
  });

  it('keeps succeeded rows for keepSucceededFor and counts durations in task_stats', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    app.task('kept', { keepSucceededFor: { hours: 1 } }, async () => {});
    const deferred = await app.defer('kept', { keep: true });
    assert.ok(deferred.enqueued);
    await withWorker(app, async () => {
      await waitFor('the kept job', async () => (await job(deferred.id))?.status === 'succeeded');
    });
    const row = (await job(deferred.id))!;
    assert.ok((row.keep_until as Date).getTime() > Date.now() + 50 * 60_000);
    const kept = (await app.jobs.stats()).find((s) => s.task === 'kept')!;
    assert.equal(kept.succeeded, 1);
    assert.equal(kept.now.succeeded, 1);
    assert.ok(kept.avg_duration_ms !== null && kept.avg_duration_ms >= 0);
    await app.close();
  });

  it('ctx.tx commits with the completion: a failed attempt leaves no effect and no follow-up', async () => {
    await t.pool.query(`CREATE TABLE "${t.schema}".effects (job_id bigint, attempt int)`);
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    app.task('follow-up', { queue: 'follow' }, async () => {});
    app.task(
      'atomic',
      { transaction: true, retry: { attempts: 2, backoff: { initial: 0, jitter: 0 } } },
      async (_args, ctx) => {
        assert.ok(ctx.tx, 'transaction: true opens ctx.tx before the handler');
        await ctx.tx.query(`INSERT INTO "${t.schema}".effects VALUES ($1, $2)`, [
          ctx.job.id,
          ctx.job.attempt,
        ]);
        await ctx.defer('follow-up', { from: ctx.job.id });
        if (ctx.job.attempt === 1) throw new Error('first attempt fails after writing');
      },
    );
    const deferred = await app.defer('atomic', {});
    assert.ok(deferred.enqueued);
    await withWorker(
      app,
      async () => {
        await waitFor('the atomic job', async () => (await job(deferred.id)) === undefined);
      },
      { queues: ['default'] },
    );
    const effects = await t.pool.query(`SELECT attempt FROM "${t.schema}".effects WHERE job_id = $1`, [
      deferred.id,
    ]);
    assert.deepEqual(effects.rows, [{ attempt: 2 }]);
    const followUps = await t.pool.query(
      `SELECT args FROM "${t.schema}".jobs WHERE task = 'follow-up' AND args ->> 'from' = $1`,
      [deferred.id],
    );
    assert.equal(followUps.rows.length, 1);
    await app.close();
  });

  it('ctx.tx of a job recovered away from a paused worker is rolled back, not committed beside the re-run', async () => {
    // Found by ops/chaos/kill.ts: a worker SIGSTOPped past its stall timeout, then resumed,
    // committed its handler's transaction although another worker had re-run the job.
    await t.pool.query(`CREATE TABLE "${t.schema}".paused_effects (job_id bigint, attempt int)`);
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => lines.push(line) });
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema, logger });
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let firstStarted = false;
    app.task('paused', { transaction: true, queue: 'paused' }, async (_args, ctx) => {
      await ctx.tx!.query(`INSERT INTO "${t.schema}".paused_effects VALUES ($1, $2)`, [
        ctx.job.id,
        ctx.job.attempt,
      ]);
      if (ctx.job.attempt === 1) {
        firstStarted = true;
        await gate; // "paused": another worker's recovery takes the job meanwhile
      }
    });
    const deferred = await app.defer('paused', {});
    assert.ok(deferred.enqueued);
    await withWorker(
      app,
      async () => {
        await waitFor('the first attempt to start', async () => firstStarted);
        // Recovery as another worker runs it once this one has been silent too long
        // (made silent inside the transaction, so a heartbeat cannot slip in between).
        const client = await t.pool.connect();
        let recovered: Awaited<ReturnType<typeof recoverStalledJobs>>;
        try {
          await client.query('BEGIN');
          await client.query(`UPDATE "${t.schema}".workers SET last_seen_at = now() - interval '2 hours'`);
          recovered = await recoverStalledJobs(client, t.schema, null);
          await client.query('COMMIT');
        } finally {
          client.release();
        }
        assert.deepEqual(
          recovered.map((r) => [r.id, r.reason]),
          [[deferred.id, 'retry']],
        );
        await waitFor('the re-run to complete', async () => (await job(deferred.id)) === undefined);
        release();
        // This worker claimed the job again itself: the paused run is dropped as superseded.
        await waitFor('the paused attempt to give up its transaction', async () =>
          lines.some(
            (line) =>
              line.includes('recovered away from this worker') || line.includes('this run is dropped'),
          ),
        );
      },
      { queues: ['paused'] },
    );
    const effects = await t.pool.query(`SELECT attempt FROM "${t.schema}".paused_effects WHERE job_id = $1`, [
      deferred.id,
    ]);
    assert.deepEqual(effects.rows, [{ attempt: 2 }]);
    await app.close();
  });

  it('a ctx.tx job whose COMMIT loses its connection is retried, not dead-lettered', async () => {
    // Found by ops/chaos/restart.ts: jobs committing during a server restart went straight
    // to the dead letter ("terminating connection due to administrator command").
    await t.pool.query(`CREATE TABLE "${t.schema}".commit_effects (job_id bigint, attempt int)`);
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    app.task(
      'commit-lost',
      { transaction: true, queue: 'commit', retry: { attempts: 3, backoff: { initial: 0, jitter: 0 } } },
      async (_args, ctx) => {
        await ctx.tx!.query(`INSERT INTO "${t.schema}".commit_effects VALUES ($1, $2)`, [
          ctx.job.id,
          ctx.job.attempt,
        ]);
        if (ctx.job.attempt > 1) return;
        // The handler succeeds, but its connection dies before the completion and COMMIT.
        const { rows } = await ctx.tx!.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
        await t.pool.query('SELECT pg_terminate_backend($1)', [rows[0]!.pid]);
        await waitFor('the backend to be gone', async () => {
          const gone = await t.pool.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [rows[0]!.pid]);
          return gone.rows.length === 0;
        });
      },
    );
    const deferred = await app.defer('commit-lost', {});
    assert.ok(deferred.enqueued);
    await withWorker(
      app,
      async () => {
        await waitFor('the job to complete', async () => (await job(deferred.id)) === undefined);
      },
      { queues: ['commit'] },
    );
    const effects = await t.pool.query(`SELECT attempt FROM "${t.schema}".commit_effects WHERE job_id = $1`, [
      deferred.id,
    ]);
    assert.deepEqual(effects.rows, [{ attempt: 2 }]);
    await app.close();
  });
});
