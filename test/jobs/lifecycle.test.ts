/**
 * Job lifecycle with real workers (docs/lifecycle.md): cancelling a running job (NOTIFY,
 * and the heartbeat's poll with LISTEN off; racing completion; a dead worker), progress,
 * results, and deferAndWait. Outcomes are counted in rows and runs, never timed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startAdminServer } from '../../src/admin/server.js';
import { type App, createApp } from '../../src/app.js';
import { JobCancelledError, JobOutcomeError, ValidationError, WaitTimeoutError } from '../../src/errors.js';
import { claimJobs } from '../../src/jobs/claim.js';
import { recoverStalledJobs } from '../../src/jobs/recover.js';
import { type FaultProxy, startFaultProxy } from '../faultProxy.js';
import { captureLog, databaseUrl, isolatedApp, runCli, type TestApp } from '../helpers.js';
import { gate, waitFor, withRunningWorker } from './support.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('lifecycle');
  await t.pool.query(`CREATE TABLE "${t.schema}".runs (job text NOT NULL)`);
  await t.pool.query(`CREATE TABLE "${t.schema}".effects (job text NOT NULL)`);
  // Counts the progress writes per job: the throttle's proof.
  await t.pool.query(`CREATE TABLE "${t.schema}".progress_writes (job bigint NOT NULL)`);
  await t.pool.query(
    `CREATE FUNCTION "${t.schema}".count_progress() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN INSERT INTO "${t.schema}".progress_writes VALUES (NEW.id); RETURN NULL; END $$`,
  );
  await t.pool.query(
    `CREATE TRIGGER count_progress AFTER UPDATE OF progress ON "${t.schema}".jobs
     FOR EACH ROW EXECUTE FUNCTION "${t.schema}".count_progress()`,
  );
});
after(async () => t.cleanup());

const q = () => `"${t.schema}"`;

const recordRun = (jobId: string) => t.pool.query(`INSERT INTO ${q()}.runs VALUES ($1)`, [jobId]);
const count = async (table: string, jobId: string) =>
  Number((await t.pool.query(`SELECT count(*) FROM ${q()}.${table} WHERE job = $1`, [jobId])).rows[0].count);
const row = async (id: string) =>
  (await t.pool.query(`SELECT * FROM ${q()}.jobs WHERE id = $1`, [id])).rows[0] as
    | {
        status: string;
        attempts: number;
        result: unknown;
        progress: number | null;
        progress_message: string | null;
        keep_until: Date | null;
        finished_at: Date | null;
        last_error: { message: string } | null;
      }
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

/** Waits until the signal aborts; resolves with its reason. */
const aborted = (signal: AbortSignal) =>
  new Promise<unknown>((resolve) => {
    if (signal.aborted) resolve(signal.reason);
    signal.addEventListener('abort', () => resolve(signal.reason));
  });

describe('cancelling a running job', () => {
  it('a long ctx.tx handler cancelled: the job ends cancelled, its effect rolled back, run once, not retried', async () => {
    const app = newApp();
    const reasons: unknown[] = [];
    app.task('long-tx', { transaction: true, retry: { attempts: 5 } }, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      await ctx.tx!.query(`INSERT INTO ${q()}.effects VALUES ($1)`, [ctx.job.id]);
      reasons.push(await aborted(ctx.signal));
      throw ctx.signal.reason;
    });
    app.task('marker', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
    });
    await withWorker(app, async () => {
      const id = await deferred(app, 'long-tx');
      await waitFor('the job to run', async () => (await count('runs', id)) === 1);
      const result = await app.jobs.cancel([id]);
      assert.deepEqual(result, { done: [id], skipped: [] });
      await waitFor('the handler to see the abort', async () => reasons.length === 1);
      assert.ok(reasons[0] instanceof JobCancelledError);
      // The worker goes on claiming: a job retried by mistake would have run by the time
      // a job deferred after it has.
      const marker = await deferred(app, 'marker');
      await waitFor('a later job to run', async () => (await count('runs', marker)) === 1);
    });
    const ids = (await t.pool.query(`SELECT id::text FROM ${q()}.jobs WHERE task = 'long-tx'`)).rows;
    const id = ids[0].id as string;
    const job = (await row(id))!;
    assert.equal(job.status, 'cancelled');
    assert.equal(job.attempts, 1);
    assert.equal(await count('runs', id), 1);
    assert.equal(await count('effects', id), 0, 'ctx.tx was rolled back');
    const audit = await t.pool.query(
      `SELECT details FROM ${q()}.audit_log WHERE action = 'jobs.cancel' AND subject = $1`,
      [`job:${id}`],
    );
    assert.equal(audit.rows[0].details.running, true);
  });

  it('with LISTEN off (behind a pooler): the heartbeat learns of the cancel; a handler that ignores its signal is discarded', async () => {
    // pooler 'pgbouncer' on a direct URL: no listenUrl, so no LISTEN at all; only the poll.
    const app = newApp({ pool: { pooler: 'pgbouncer' } });
    const stubborn = gate();
    let sawAbort = false;
    app.task('marker-2', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
    });
    app.task('stubborn', { keepSucceededFor: { minutes: 5 }, transaction: true }, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      await ctx.tx!.query(`INSERT INTO ${q()}.effects VALUES ($1)`, [ctx.job.id]);
      ctx.signal.addEventListener('abort', () => {
        sawAbort = true;
      });
      await stubborn.opened; // ignores the signal
      return { late: true };
    });
    let id = '';
    await withWorker(app, async () => {
      id = await deferred(app, 'stubborn');
      await waitFor('the job to run', async () => (await count('runs', id)) === 1);
      await app.jobs.cancel([id]);
      await waitFor('the worker to abort the handler (heartbeat poll)', async () => sawAbort);
      stubborn.open(); // it returns after the cancel: its outcome is discarded
      // The slot was freed at the cancel, and the worker goes on: a later job runs.
      const marker = await deferred(app, 'marker-2');
      await waitFor('a later job to run', async () => (await count('runs', marker)) === 1);
    });
    const job = (await row(id))!;
    assert.equal(job.status, 'cancelled', 'never succeeded after the cancel');
    assert.equal(job.result, null);
    assert.equal(await count('runs', id), 1);
    assert.equal(await count('effects', id), 0);
  });

  it('cancel racing completion: each job ends either cancelled (no effect) or succeeded (effect once), as the cancel reports', async () => {
    const app = newApp();
    const go = gate();
    app.task('racer', { keepSucceededFor: { minutes: 5 }, transaction: true }, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      await ctx.tx!.query(`INSERT INTO ${q()}.effects VALUES ($1)`, [ctx.job.id]);
      await go.opened;
      return 'done';
    });
    await withWorker(
      app,
      async () => {
        const ids: string[] = [];
        for (let i = 0; i < 30; i++) ids.push(await deferred(app, 'racer'));
        await waitFor('all to run', async () => {
          const { rows } = await t.pool.query(
            `SELECT count(DISTINCT job)::int AS n FROM ${q()}.runs WHERE job = ANY ($1)`,
            [ids],
          );
          return rows[0].n === ids.length;
        });
        // The handlers return while the cancels go out, one by one.
        go.open();
        const cancelled = new Set<string>();
        for (const id of ids) for (const done of (await app.jobs.cancel([id])).done) cancelled.add(done);
        await waitFor('every job to be settled', async () => {
          const { rows } = await t.pool.query(
            `SELECT count(*)::int AS n FROM ${q()}.jobs WHERE id = ANY ($1) AND status IN ('succeeded', 'cancelled')`,
            [ids],
          );
          return rows[0].n === ids.length;
        });
        for (const id of ids) {
          const job = (await row(id))!;
          assert.equal(job.status, cancelled.has(id) ? 'cancelled' : 'succeeded', `job ${id}`);
          assert.equal(await count('effects', id), cancelled.has(id) ? 0 : 1, `job ${id} effects`);
          assert.equal(job.result, cancelled.has(id) ? null : 'done');
          assert.equal(await count('runs', id), 1);
        }
      },
      { concurrency: 30 },
    );
  });

  it('a job claimed but still waiting for a slot when cancelled is never started', async () => {
    const app = newApp();
    const blocker = gate();
    app.task('slot-holder', {}, async (args: { block: boolean }, ctx) => {
      await recordRun(ctx.job.id);
      if (args.block) await blocker.opened;
    });
    await withWorker(
      app,
      async () => {
        // A quick job first: the worker learns jobs are quick and claims ahead of its one slot.
        const quick = await deferred(app, 'slot-holder', { block: false });
        await waitFor('the quick job', async () => (await row(quick)) === undefined);
        const holder = await deferred(app, 'slot-holder', { block: true });
        const victim = await deferred(app, 'slot-holder', { block: false });
        await waitFor('the holder to run and the victim to be claimed behind it', async () => {
          return (await count('runs', holder)) === 1 && (await row(victim))?.status === 'doing';
        });
        assert.equal(await count('runs', victim), 0);
        assert.deepEqual((await app.jobs.cancel([victim])).done, [victim]);
        const later = await deferred(app, 'slot-holder', { block: false });
        blocker.open();
        await waitFor('a job deferred after it to run', async () => (await count('runs', later)) === 1);
        assert.equal(await count('runs', victim), 0, 'the cancelled job never started');
        assert.equal((await row(victim))!.status, 'cancelled');
      },
      { concurrency: 1 },
    );
  });

  it('a dirty job (its worker dead) cancelled is never recovered nor run again', async () => {
    const id = await deferred(t.app, 'orphaned-by-death', {}, { queue: 'graveyard' });
    const [claimed] = await claimJobs(t.pool, t.schema, {
      queues: ['graveyard'],
      skipTasks: [],
      limit: 10,
      workerId: 'dead-worker',
      now: null,
    });
    assert.equal(claimed?.id, id);
    assert.deepEqual((await t.app.jobs.cancel([id])).done, [id]);
    const recovered = await recoverStalledJobs(t.pool, t.schema, null);
    assert.equal(
      recovered.filter((job) => job.id === id).length,
      0,
      'recovery does not touch a cancelled job',
    );
    assert.equal((await row(id))!.status, 'cancelled');
  });

  it('the CLI and the dashboard (token required) cancel running jobs', async () => {
    const app = newApp();
    app.task('cli-cancel', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      await aborted(ctx.signal);
      throw ctx.signal.reason;
    });
    await withWorker(
      app,
      async () => {
        const viaCli = await deferred(app, 'cli-cancel');
        const viaApi = await deferred(app, 'cli-cancel');
        await waitFor(
          'both to run',
          async () => (await count('runs', viaCli)) + (await count('runs', viaApi)) === 2,
        );
        const cli = await runCli(['jobs', 'cancel', viaCli, '--schema', t.schema], {
          DATABASE_URL: databaseUrl(),
        });
        assert.equal(cli.code, 0, cli.stderr);
        assert.match(cli.stdout, new RegExp(`cancelled 1 job\\(s\\): ${viaCli}`));
        const server = await startAdminServer({ app: t.app, port: 0, token: 'lifecycle-token' });
        try {
          const refused = await fetch(`${server.url}/api/jobs/${viaApi}/cancel`, { method: 'POST' });
          assert.equal(refused.status, 401);
          assert.equal((await row(viaApi))!.status, 'doing');
          const done = await fetch(`${server.url}/api/jobs/${viaApi}/cancel`, {
            method: 'POST',
            headers: { authorization: 'Bearer lifecycle-token' },
          });
          assert.deepEqual(await done.json(), { done: [viaApi], skipped: [] });
        } finally {
          await server.close();
        }
        for (const id of [viaCli, viaApi]) assert.equal((await row(id))!.status, 'cancelled');
        assert.equal(await count('runs', viaCli), 1);
        assert.equal(await count('runs', viaApi), 1);
      },
      { concurrency: 2 },
    );
  });
});

describe('progress', () => {
  it('many reports are written throttled, the last one always; shown by jobs show, the JSON API and the dashboard list', async () => {
    const app = newApp();
    const hold = gate();
    const finish = gate();
    app.task('reporting', { keepSucceededFor: { minutes: 5 } }, async (_a, ctx) => {
      for (let i = 0; i <= 50; i++) ctx.progress(i, `step ${i}`);
      hold.open();
      await finish.opened;
      ctx.progress(100, 'done');
      return { ok: true };
    });
    await withWorker(app, async () => {
      const id = await deferred(app, 'reporting');
      await hold.opened;
      await waitFor('the latest report to be written', async () => (await row(id))?.progress === 50);
      assert.equal((await row(id))!.progress_message, 'step 50');
      // 51 reports in one tick: one write (a second at most, if a flush fell in between).
      const writes = Number(
        (await t.pool.query(`SELECT count(*) FROM ${q()}.progress_writes WHERE job = $1`, [id])).rows[0]
          .count,
      );
      assert.ok(writes >= 1 && writes <= 2, `${writes} writes for 51 reports`);
      const server = await startAdminServer({ app: t.app, port: 0 });
      try {
        const page = (await (await fetch(`${server.url}/api/jobs?state=doing`)).json()) as {
          jobs: { id: string; progress: number; progress_message: string }[];
        };
        const listed = page.jobs.find((job) => job.id === id);
        assert.equal(listed?.progress, 50);
        assert.equal(listed?.progress_message, 'step 50');
        const detail = (await (await fetch(`${server.url}/api/jobs/${id}`)).json()) as {
          job: { progress: number };
        };
        assert.equal(detail.job.progress, 50);
      } finally {
        await server.close();
      }
      finish.open();
      // The last report comes just before success: written on the kept row right after.
      await waitFor('the final value on the kept row', async () => {
        const job = await row(id);
        return job?.status === 'succeeded' && job.progress === 100;
      });
      const shown = await runCli(['jobs', 'show', id, '--schema', t.schema], { DATABASE_URL: databaseUrl() });
      assert.equal(shown.code, 0, shown.stderr);
      assert.match(shown.stdout, /progress 100% done/);
      assert.match(shown.stdout, /result \{"ok":true\}/);
    });
  });

  it('a bad value throws one line naming it, and nothing is written', async () => {
    const app = newApp();
    const errors: string[] = [];
    app.task('bad-progress', { keepSucceededFor: { minutes: 5 } }, async (_a, ctx) => {
      for (const bad of [150, -1, Number.NaN, '50', undefined]) {
        try {
          ctx.progress(bad as number);
        } catch (error) {
          assert.ok(error instanceof ValidationError);
          errors.push((error as Error).message);
        }
      }
      try {
        ctx.progress(10, 'x'.repeat(501));
      } catch (error) {
        errors.push((error as Error).message);
      }
    });
    await withWorker(app, async () => {
      const id = await deferred(app, 'bad-progress');
      await waitFor('the job to succeed', async () => (await row(id))?.status === 'succeeded');
      assert.equal(errors.length, 6);
      assert.match(errors[0]!, /^progress 150 is invalid: expected a number from 0 to 100/);
      assert.match(errors[3]!, /^progress "50" is invalid/);
      assert.match(errors[5]!, /progress message is invalid/);
      for (const message of errors) assert.ok(!message.includes('\n'));
      assert.equal((await row(id))!.progress, null);
    });
  });
});

describe('results and deferAndWait', () => {
  it('a kept job keeps its return value; one not kept stores nothing', async () => {
    const app = newApp();
    app.task('kept-result', { keepSucceededFor: { minutes: 5 } }, async (args: { n: number }) => ({
      doubled: args.n * 2,
      at: new Date('2030-01-01T00:00:00Z'),
    }));
    await withWorker(app, async () => {
      const id = await deferred(app, 'kept-result', { n: 21 });
      await waitFor('the job to succeed', async () => (await row(id))?.status === 'succeeded');
      assert.deepEqual((await app.jobs.show(id))!.result, { doubled: 42, at: '2030-01-01T00:00:00.000Z' });
    });
  });

  it('a return value that is not JSON fails the attempt with one line naming it', async () => {
    const app = newApp();
    app.task('bigint-result', { keepSucceededFor: { minutes: 5 }, retry: { attempts: 1 } }, async () => ({
      total: 10n,
    }));
    await withWorker(app, async () => {
      const id = await deferred(app, 'bigint-result');
      await waitFor('the job to fail', async () => (await row(id))?.status === 'failed');
      assert.match(
        (await row(id))!.last_error!.message,
        /^the return value of task "bigint-result"\.total is a BigInt/,
      );
    });
  });

  it('deferAndWait resolves with the result, for a task that keeps no succeeded jobs (the awaited row is kept)', async () => {
    const app = newApp();
    const sum = app.task('sum', {}, async (args: { a: number; b: number }, ctx) => {
      await recordRun(ctx.job.id);
      return args.a + args.b;
    });
    await withWorker(app, async () => {
      assert.equal(await sum.deferAndWait<number>({ a: 2, b: 3 }, { timeout: { seconds: 30 } }), 5);
      assert.deepEqual(await app.deferAndWait('sum', { a: 1, b: 1 }), 2);
      const { rows } = await t.pool.query(
        `SELECT status, result, awaited, keep_until > now() + interval '50 minutes' AS kept_an_hour
         FROM ${q()}.jobs WHERE task = 'sum' ORDER BY id`,
      );
      assert.deepEqual(
        rows.map((r) => [r.status, r.result, r.awaited, r.kept_an_hour]),
        [
          ['succeeded', 5, true, true],
          ['succeeded', 2, true, true],
        ],
      );
    });
  });

  it('deferAndWait rejects when the job fails for good, is cancelled, or the wait times out (the job goes on)', async () => {
    const app = newApp();
    const slow = gate();
    app.task('always-fails', { retry: { attempts: 2, backoff: { initial: 10 } } }, async () => {
      throw new Error('no luck');
    });
    app.task('cancelled-while-awaited', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      await aborted(ctx.signal);
      throw ctx.signal.reason;
    });
    const slowTask = app.task('slow', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      await slow.opened;
      return 'finally';
    });
    await withWorker(
      app,
      async () => {
        await assert.rejects(app.deferAndWait('always-fails', {}), (error: unknown) => {
          assert.ok(error instanceof JobOutcomeError);
          assert.equal(error.status, 'failed');
          assert.match(
            error.message,
            /^job \d+ \(task always-fails\) failed for good after 2 attempt\(s\): no luck$/,
          );
          return true;
        });

        const waiting = app.deferAndWait('cancelled-while-awaited', {});
        const { rows } = await waitFor('the awaited job to run', async () => {
          const found = await t.pool.query(
            `SELECT id::text FROM ${q()}.jobs WHERE task = 'cancelled-while-awaited' AND status = 'doing'`,
          );
          return found.rowCount ? found : null;
        });
        await app.jobs.cancel([rows[0].id]);
        await assert.rejects(waiting, (error: unknown) => {
          assert.ok(error instanceof JobOutcomeError);
          assert.equal(error.status, 'cancelled');
          return true;
        });

        await assert.rejects(slowTask.deferAndWait({}, { timeout: 300 }), (error: unknown) => {
          assert.ok(error instanceof WaitTimeoutError);
          assert.match(error.message, /the job itself goes on/);
          return true;
        });
        slow.open();
        await waitFor('the slow job to succeed anyway', async () => {
          const found = await t.pool.query(
            `SELECT result FROM ${q()}.jobs WHERE task = 'slow' AND status = 'succeeded'`,
          );
          return found.rows[0]?.result === 'finally';
        });
      },
      { concurrency: 4 },
    );
  });

  it('deferAndWait without LISTEN (behind a pooler) polls, and a job finished before the wait looks is found', async () => {
    const waiter = newApp({ pool: { pooler: 'pgbouncer' } });
    const worker = newApp();
    worker.task('quick', {}, async () => 'quick result');
    await withWorker(worker, async () => {
      // The worker finishes each job within a poll interval of the waiter's first look, or
      // before it: the waiter finds it by reading the row.
      for (let i = 0; i < 3; i++) {
        assert.equal(
          await waiter.deferAndWait('quick', {}, { pollInterval: 100, timeout: { seconds: 30 } }),
          'quick result',
        );
      }
    });
    await waiter.close();
  });

  it('deferAndWait on a job that finished before the wait began: found at the first look, without a poll', async () => {
    // A trigger finishes the job inside the deferring transaction itself: when the wait
    // begins it is already succeeded, and its NOTIFY went out before anyone waited.
    await t.pool.query(`
      CREATE FUNCTION ${q()}.finish_at_once() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        UPDATE ${q()}.jobs SET status = 'succeeded', result = '"already"', keep_until = now() + interval '1 hour'
        WHERE id = NEW.id;
        RETURN NULL;
      END $$;
      CREATE TRIGGER finish_at_once AFTER UPDATE OF awaited ON ${q()}.jobs
      FOR EACH ROW WHEN (NEW.task = 'instant') EXECUTE FUNCTION ${q()}.finish_at_once();`);
    const app = newApp();
    try {
      // A poll interval longer than the timeout: only the first look can find it.
      assert.equal(
        await app.deferAndWait('instant', {}, { pollInterval: { minutes: 5 }, timeout: { seconds: 20 } }),
        'already',
      );
    } finally {
      await app.close();
      await t.pool.query(`DROP TRIGGER finish_at_once ON ${q()}.jobs; DROP FUNCTION ${q()}.finish_at_once()`);
    }
  });

  it('bad deferAndWait input: one line, nothing enqueued', async () => {
    const before = Number((await t.pool.query(`SELECT count(*) FROM ${q()}.jobs`)).rows[0].count);
    const task = t.app.task('never-deferred', {}, async () => {});
    await assert.rejects(task.deferAndWait({}, { client: t.pool } as never), /takes no client/);
    await assert.rejects(
      task.deferAndWait({}, { timeout: -5 }),
      /timeout \(-5 ms\) is invalid|timeout .*invalid/,
    );
    await assert.rejects(
      t.app.deferAndWait('never-deferred', {}, { pollInterval: 0 }),
      /pollInterval \(0 ms\) is invalid/,
    );
    await assert.rejects(t.app.deferAndWait('', {}), /task name "" is invalid/);
    await assert.rejects(task.deferAndWait({}, { queue: 'no spaces' }), /queue name "no spaces" is invalid/);
    const after = Number((await t.pool.query(`SELECT count(*) FROM ${q()}.jobs`)).rows[0].count);
    assert.equal(after, before);
  });
});

describe('faults on the completion path', () => {
  let proxy: FaultProxy;
  before(async () => {
    proxy = await startFaultProxy(databaseUrl());
  });
  after(async () => proxy.close());

  it("an awaited job's completion whose reply is lost: written once with its result, the waiter gets it, run once", async () => {
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema });
    app.task('lost-completion', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      return { answer: 42 };
    });
    await withWorker(app, async () => {
      const { fired } = proxy.addRule({ match: 'outbatch_complete_', action: 'lose-reply' });
      const waiter = newApp();
      try {
        assert.deepEqual(await waiter.deferAndWait('lost-completion', {}, { timeout: { seconds: 30 } }), {
          answer: 42,
        });
      } finally {
        await waiter.close();
      }
      await fired;
      const { rows } = await t.pool.query(
        `SELECT id::text, status, result FROM ${q()}.jobs WHERE task = 'lost-completion'`,
      );
      assert.equal(rows.length, 1);
      assert.equal(rows[0].status, 'succeeded');
      assert.equal(await count('runs', rows[0].id), 1);
    });
  });

  it('refused: a result the server refuses fails the job saying so (its waiter is told), a refused progress write is dropped; neither strands a job', async () => {
    // A trigger stands in for whatever makes the server refuse one statement.
    await t.pool.query(`
      CREATE FUNCTION ${q()}.refuse_lifecycle() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.result ->> 'refuse' = 'yes' THEN RAISE EXCEPTION 'this result is refused'; END IF;
        IF NEW.progress = 13 THEN RAISE EXCEPTION 'this progress is refused'; END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER refuse_lifecycle BEFORE UPDATE ON ${q()}.jobs
      FOR EACH ROW EXECUTE FUNCTION ${q()}.refuse_lifecycle();`);
    try {
      const { log, lines } = captureLog('warn');
      const app = newApp({ logger: log });
      const finish = gate();
      app.task('refused-result', {}, async (args: { refuse: string }, ctx) => {
        await recordRun(ctx.job.id);
        return { refuse: args.refuse };
      });
      app.task('refused-progress', {}, async (_a, ctx) => {
        ctx.progress(13, 'unlucky');
        await finish.opened;
        return 'finished';
      });
      await withWorker(
        app,
        async () => {
          const [refused, accepted] = await Promise.allSettled([
            app.deferAndWait('refused-result', { refuse: 'yes' }, { timeout: { seconds: 30 } }),
            app.deferAndWait('refused-result', { refuse: 'no' }, { timeout: { seconds: 30 } }),
          ]);
          assert.equal(refused.status, 'rejected');
          const error = (refused as PromiseRejectedResult).reason;
          assert.ok(error instanceof JobOutcomeError);
          assert.match(
            error.message,
            /failed for good after 1 attempt\(s\): outcome could not be recorded \(success\)/,
          );
          assert.deepEqual((accepted as PromiseFulfilledResult<unknown>).value, { refuse: 'no' });

          const waiting = app.deferAndWait('refused-progress', {}, { timeout: { seconds: 30 } });
          await waitFor('the progress write to be refused', async () =>
            lines.some((line) => line.includes('progress reports were refused; dropped')),
          );
          finish.open();
          const { rows } = await t.pool.query(
            `SELECT id::text FROM ${q()}.jobs WHERE task = 'refused-progress'`,
          );
          assert.equal(await waiting, 'finished');
          assert.equal((await row(rows[0].id))!.progress, null);
        },
        { concurrency: 4 },
      );
    } finally {
      await t.pool.query(
        `DROP TRIGGER refuse_lifecycle ON ${q()}.jobs; DROP FUNCTION ${q()}.refuse_lifecycle()`,
      );
    }
  });

  it('a progress write whose reply is lost: the value is written again and ends on the row', async () => {
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema });
    const finish = gate();
    app.task('lost-progress', {}, async (_a, ctx) => {
      ctx.progress(33, 'a third');
      await finish.opened;
    });
    await withWorker(app, async () => {
      const { fired } = proxy.addRule({ match: 'progress_message = t.message', action: 'lose-reply' });
      const id = await deferred(app, 'lost-progress');
      await fired;
      await waitFor('the progress to be on the row', async () => (await row(id))?.progress === 33);
      finish.open();
      await waitFor('the job to end', async () => (await row(id)) === undefined);
    });
  });
});
