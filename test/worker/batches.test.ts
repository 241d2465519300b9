/**
 * Batch tasks (docs/batches.md) with real workers: jobs reach the handler in batches of at
 * most `size`, each job settles on its own (done, or retried with its own attempts), a
 * throw fails the whole batch, a killed worker's batch is recovered and run again.
 * Outcomes are counted: handler calls, and per job, runs and rows left.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { makeApi } from '../../src/admin/api.js';
import { type App, createApp } from '../../src/app.js';
import { ValidationError } from '../../src/errors.js';
import type { BatchJob } from '../../src/jobs/task.js';
import { createLogger } from '../../src/log.js';
import { startFaultProxy } from '../faultProxy.js';
import { databaseUrl, isolatedApp, ROOT, runCli, type TestApp } from '../helpers.js';
import { createRunsTable, spawnWorker, type WorkerProcess, waitFor, workerStarted } from '../jobs/support.js';

let t: TestApp;
const alive: WorkerProcess[] = [];
before(async () => {
  t = await isolatedApp('jobs_batches');
  await createRunsTable(t.pool, t.schema);
});
after(async () => {
  for (const worker of alive) worker.child.kill('SIGKILL');
  await t.cleanup();
});

const BATCH_APP = path.join(ROOT, 'test', 'fixtures', 'batch-app.ts');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const QUICK_RETRY = { attempts: 3, backoff: { initial: 10, factor: 1, max: 10, jitter: 0 } };

/** A fresh app on the test schema, its worker running around `body`. */
async function withWorker(
  register: (app: App) => void,
  body: (app: App) => Promise<void>,
  concurrency = 4,
): Promise<void> {
  const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
  register(app);
  const controller = new AbortController();
  const running = app.run({ concurrency, pollInterval: 200, signal: controller.signal });
  try {
    await body(app);
  } finally {
    controller.abort();
    await running;
    await app.close();
  }
}

const left = async (task: string) =>
  (await t.pool.query(`SELECT count(*)::int AS n FROM "${t.schema}".jobs WHERE task = $1`, [task])).rows[0]
    .n as number;
const rowsOf = async (task: string) =>
  (
    await t.pool.query(
      `SELECT id::text, status, attempts, last_error FROM "${t.schema}".jobs WHERE task = $1 ORDER BY id`,
      [task],
    )
  ).rows as { id: string; status: string; attempts: number; last_error: { message: string } | null }[];

describe('batch tasks', () => {
  it('50 jobs of a batch task with size 10: a handful of calls of at most 10, every job done exactly once', async () => {
    const calls: number[] = [];
    const done = new Map<string, number>();
    await withWorker(
      (app) => {
        app.task(
          'bulk-50',
          { batch: { size: 10, maxWait: 500 } },
          async (jobs: BatchJob<{ n: number }>[]) => {
            calls.push(jobs.length);
            for (const job of jobs) done.set(job.id, (done.get(job.id) ?? 0) + 1);
          },
        );
      },
      async (app) => {
        // Ten defers of five while the worker runs: claims race with the inserts.
        for (let i = 0; i < 50; i += 5) {
          await Promise.all(Array.from({ length: 5 }, (_, n) => app.defer('bulk-50', { n: i + n })));
        }
        await waitFor('every job to be done', async () => done.size === 50 && (await left('bulk-50')) === 0);
      },
      10,
    );
    assert.ok(
      calls.every((n) => n >= 1 && n <= 10),
      `batch sizes ${calls}`,
    );
    assert.equal(
      calls.reduce((a, b) => a + b, 0),
      50,
    );
    assert.deepEqual([...new Set(done.values())], [1], 'each job ran once');
    // Jobs arriving while the worker claims: maxWait gathers them; a few partial batches at most.
    assert.ok(calls.length <= Math.ceil(50 / 10) + 3, `${calls.length} calls: ${calls}`);
    const stats = await t.pool.query(
      `SELECT sum(succeeded)::int AS n FROM "${t.schema}".task_stats WHERE task = 'bulk-50'`,
    );
    assert.equal(stats.rows[0].n, 50);
  });

  it('50 jobs waiting before the worker starts, size 10: five calls of 10', async () => {
    const calls: number[] = [];
    const seen = new Map<string, number>();
    const app0 = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    await app0
      .task('bulk-ready', {}, async () => {})
      .deferMany(Array.from({ length: 50 }, (_, n) => ({ args: { n } })));
    await app0.close();
    await withWorker(
      (app) => {
        // A long maxWait: batches here fill from the backlog, never by the timer.
        app.task('bulk-ready', { batch: { size: 10, maxWait: 10_000 } }, async (jobs) => {
          calls.push(jobs.length);
          for (const job of jobs) seen.set(job.id, (seen.get(job.id) ?? 0) + 1);
        });
      },
      async () => {
        await waitFor(
          'every job to be done',
          async () => seen.size === 50 && (await left('bulk-ready')) === 0,
        );
      },
      10,
    );
    assert.deepEqual(calls, [10, 10, 10, 10, 10]);
    assert.deepEqual([...new Set(seen.values())], [1]);
  });

  it("jobs stats, the JSON API and the CLI show a batch task's batching, as its worker registered it", async () => {
    // Registered by the worker of the test above.
    const stats = await t.app.jobs.stats();
    assert.deepEqual(stats.find((s) => s.task === 'bulk-ready')?.batch, { size: 10, maxWaitMs: 10_000 });
    const api = makeApi(t.app, async () => t.pool);
    const registered = [
      { task: 'bulk-50', size: 10, maxWaitMs: 500 },
      { task: 'bulk-ready', size: 10, maxWaitMs: 10_000 },
    ];
    assert.deepEqual((await api.batchTasks()).batchTasks, registered);
    assert.deepEqual((await api.overview({ showQueries: false })).batchTasks, registered);
    const cli = await runCli(['jobs', 'stats', '--schema', t.schema], { DATABASE_URL: databaseUrl() });
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stdout, /bulk-50 .* up to 10, 500 ms/);
  });

  it('per-job outcomes: failed jobs retry with their own attempts, the others are done once', async () => {
    const runs = new Map<string, number[]>();
    await withWorker(
      (app) => {
        app.task(
          'bulk-partial',
          { batch: { size: 10, maxWait: 300 }, retry: QUICK_RETRY },
          async (jobs: BatchJob<{ n: number }>[]) => {
            for (const job of jobs) runs.set(job.id, [...(runs.get(job.id) ?? []), job.attempt]);
            // Odd n fails its first attempt; n = 3 fails every attempt (dead letter after 3).
            return jobs.map((job) =>
              job.args.n === 3 || (job.args.n % 2 === 1 && job.attempt === 1)
                ? { ok: false as const, error: new Error(`downstream refused ${job.args.n}`) }
                : { ok: true as const },
            );
          },
        );
      },
      async (app) => {
        for (let n = 0; n < 20; n += 1) await app.defer('bulk-partial', { n });
        await waitFor(
          'the good jobs done, the bad one dead-lettered',
          async () => {
            const rows = await rowsOf('bulk-partial');
            return rows.length === 1 && rows[0]!.status === 'failed';
          },
          30_000,
          () => rowsOf('bulk-partial'),
        );
      },
    );
    const [dead] = await rowsOf('bulk-partial');
    assert.equal(dead!.attempts, 3);
    assert.match(dead!.last_error!.message, /downstream refused 3/);
    const attempts = [...runs.values()].map((a) => a.join(','));
    // 10 even jobs once; 9 odd ones twice (1, 2); n = 3 three times.
    assert.equal(attempts.filter((a) => a === '1').length, 10);
    assert.equal(attempts.filter((a) => a === '1,2').length, 9);
    assert.equal(attempts.filter((a) => a === '1,2,3').length, 1);
    const stats = await t.pool.query(
      `SELECT sum(succeeded)::int AS succeeded, sum(retried)::int AS retried, sum(failed)::int AS failed
       FROM "${t.schema}".task_stats WHERE task = 'bulk-partial'`,
    );
    assert.deepEqual(stats.rows[0], { succeeded: 19, retried: 11, failed: 1 });
  });

  it('a handler that throws fails every job of the batch, and each retries', async () => {
    const calls: { attempt: number; size: number }[] = [];
    await withWorker(
      (app) => {
        app.task('bulk-throws', { batch: { size: 5, maxWait: 300 }, retry: QUICK_RETRY }, async (jobs) => {
          calls.push({ attempt: Math.max(...jobs.map((job) => job.attempt)), size: jobs.length });
          if (jobs.some((job) => job.attempt === 1)) throw new Error('the bulk API is down');
        });
      },
      async (app) => {
        for (let n = 0; n < 5; n += 1) await app.defer('bulk-throws', { n });
        await waitFor('every job done on its retry', async () => (await left('bulk-throws')) === 0);
      },
    );
    const first = calls.filter((c) => c.attempt === 1);
    const second = calls.filter((c) => c.attempt === 2);
    assert.equal(
      first.reduce((a, c) => a + c.size, 0),
      5,
      'each job failed once',
    );
    assert.equal(
      second.reduce((a, c) => a + c.size, 0),
      5,
      'each job retried once',
    );
    const stats = await t.pool.query(
      `SELECT sum(succeeded)::int AS succeeded, sum(retried)::int AS retried FROM "${t.schema}".task_stats WHERE task = 'bulk-throws'`,
    );
    assert.deepEqual(stats.rows[0], { succeeded: 5, retried: 5 });
  });

  it("the task's timeout bounds the whole call: every job of the batch fails with JobTimeoutError and retries", async () => {
    const calls: number[] = [];
    await withWorker(
      (app) => {
        app.task(
          'bulk-slow',
          {
            batch: { size: 5, maxWait: 300 },
            timeout: 200,
            retry: QUICK_RETRY,
            keepSucceededFor: { minutes: 5 },
          },
          async (jobs) => {
            calls.push(Math.max(...jobs.map((job) => job.attempt)));
            if (jobs.some((job) => job.attempt === 1)) {
              // Ignores its signal: the slot is freed at the timeout all the same.
              await sleep(1_000);
            }
          },
        );
      },
      async (app) => {
        await app.defer('bulk-slow', { n: 1 });
        await app.defer('bulk-slow', { n: 2 });
        await waitFor('both jobs done on their retry', async () => {
          const rows = await rowsOf('bulk-slow');
          return rows.length === 2 && rows.every((row) => row.status === 'succeeded');
        });
      },
    );
    const stats = await t.pool.query(
      `SELECT sum(succeeded)::int AS succeeded, sum(retried)::int AS retried FROM "${t.schema}".task_stats WHERE task = 'bulk-slow'`,
    );
    assert.deepEqual(stats.rows[0], { succeeded: 2, retried: 2 });
    assert.equal(calls[0], 1);
    const { rows } = await t.pool.query(
      `SELECT errors -> 0 ->> 'message' AS first FROM "${t.schema}".jobs WHERE task = 'bulk-slow'`,
    );
    assert.deepEqual(
      rows.map((row) => row.first),
      ['job exceeded its timeout of 200 ms', 'job exceeded its timeout of 200 ms'],
    );
  });

  it('a malformed result fails every job of the batch, saying what was expected', async () => {
    await withWorker(
      (app) => {
        app.task('bulk-malformed', { batch: { size: 5 }, retry: { attempts: 1 } }, async (jobs) =>
          jobs.slice(1).map(() => ({ ok: true as const })),
        );
      },
      async (app) => {
        await app.defer('bulk-malformed', {});
        await waitFor(
          'the job to fail',
          async () => (await rowsOf('bulk-malformed'))[0]?.status === 'failed',
        );
      },
    );
    const [row] = await rowsOf('bulk-malformed');
    assert.match(row!.last_error!.message, /resolved with 0 outcome\(s\) for 1 job\(s\): expected nothing/);
  });

  it('maxWait: jobs fewer than the size run together once maxWait has passed', async () => {
    const calls: number[] = [];
    await withWorker(
      (app) => {
        app.task('bulk-wait', { batch: { size: 100, maxWait: 1_000 } }, async (jobs) => {
          calls.push(jobs.length);
        });
      },
      async (app) => {
        for (let n = 0; n < 3; n += 1) await app.defer('bulk-wait', { n });
        await waitFor('the jobs to run', async () => (await left('bulk-wait')) === 0);
      },
    );
    assert.equal(
      calls.reduce((a, b) => a + b, 0),
      3,
    );
    assert.ok(calls.length <= 3 && calls.every((n) => n <= 3), `calls ${calls}`);
  });

  it('a batch being collected does not hoard jobs of other tasks: they stay claimable by other workers', async () => {
    // Found in review: the claim that filled a collecting batch's room took whatever was due
    // first, so one job of a size-1000 batch task made a concurrency-1 worker hold all 40
    // waiting jobs of a slow plain task `doing` (without the batch job it held 1).
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let plainRuns = 0;
    const batchCalls: number[] = [];
    await withWorker(
      (app) => {
        app.task('bulk-collect', { batch: { size: 1_000, maxWait: 500 } }, async (jobs) => {
          batchCalls.push(jobs.length);
        });
        app.task('slow-plain', {}, async () => {
          plainRuns += 1;
          await gate;
        });
      },
      async (app) => {
        await app.defer('bulk-collect', { n: 0 });
        for (let n = 0; n < 40; n += 1) await app.defer('slow-plain', { n });
        await waitFor('a plain job running', async () => plainRuns === 1);
        const doingOf = async (task: string) =>
          (
            await t.pool.query(
              `SELECT count(*)::int AS n FROM "${t.schema}".jobs WHERE task = $1 AND status = 'doing'`,
              [task],
            )
          ).rows[0].n as number;
        await waitFor('the batch job collected', async () => (await doingOf('bulk-collect')) === 1);
        // More jobs of the batch task; polls come and go while the plain job holds the slot.
        for (let n = 1; n < 5; n += 1) await app.defer('bulk-collect', { n });
        const polled = Date.now();
        await waitFor('a few polls', async () => Date.now() - polled > 600);
        const doing = await doingOf('slow-plain');
        assert.ok(doing <= 2, `a concurrency-1 worker holds ${doing} slow-plain jobs doing`);
        release();
        await waitFor(
          'every job',
          async () => (await left('slow-plain')) === 0 && (await left('bulk-collect')) === 0,
        );
      },
      1,
    );
    assert.equal(plainRuns, 40);
    assert.equal(
      batchCalls.reduce((a, b) => a + b, 0),
      5,
      `batch calls ${batchCalls}`,
    );
  });

  it('shutdown while a batch is being collected: its jobs go back to todo uncounted, the handler never called', async () => {
    const calls: number[] = [];
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    app.task('bulk-gather', { batch: { size: 100, maxWait: { minutes: 10 } } }, async (jobs) => {
      calls.push(jobs.length);
    });
    const controller = new AbortController();
    const running = app.run({ concurrency: 2, pollInterval: 200, signal: controller.signal });
    try {
      for (let n = 0; n < 3; n += 1) await app.defer('bulk-gather', { n });
      await waitFor('the jobs collected', async () =>
        (await rowsOf('bulk-gather')).every((row) => row.status === 'doing'),
      );
    } finally {
      controller.abort();
      await running;
      await app.close();
    }
    assert.deepEqual(calls, []);
    assert.deepEqual(
      (await rowsOf('bulk-gather')).map((row) => [row.status, row.attempts]),
      [
        ['todo', 0],
        ['todo', 0],
        ['todo', 0],
      ],
    );
  });

  it("lost replies of the claims that fill a batch and of a batch's completions: every job runs once, no attempt counted twice", async () => {
    const proxy = await startFaultProxy(databaseUrl());
    const seen = new Map<string, number>();
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema });
    app.task(
      'bulk-faults',
      { batch: { size: 5, maxWait: 300 }, keepSucceededFor: { minutes: 5 } },
      async (jobs) => {
        for (const job of jobs) seen.set(job.id, (seen.get(job.id) ?? 0) + 1);
      },
    );
    for (let n = 0; n < 20; n += 1) await app.defer('bulk-faults', { n });
    // The first claims (an ordinary one, then one for the batch's room) and one completion.
    const claimsLost = proxy.addRule({ match: 'outbatch_claim', action: 'lose-reply', times: 2 }).fired;
    const completionLost = proxy.addRule({ match: 'outbatch_complete_', action: 'lose-reply' }).fired;
    const controller = new AbortController();
    const running = app.run({ concurrency: 2, pollInterval: 200, signal: controller.signal });
    try {
      await claimsLost;
      await completionLost;
      await waitFor('every job done', async () =>
        (await rowsOf('bulk-faults')).every((row) => row.status === 'succeeded'),
      );
    } finally {
      controller.abort();
      await running;
      await app.close();
      await proxy.close();
    }
    const rows = await rowsOf('bulk-faults');
    assert.equal(rows.length, 20);
    assert.deepEqual(
      rows.map((row) => [row.status, row.attempts, seen.get(row.id)]),
      rows.map(() => ['succeeded', 1, 1]),
    );
  });

  it("a batch task's handler, called for one job, runs it as a batch of one", async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    const seen: BatchJob[][] = [];
    const task = app.task('one-of-batch', { batch: { size: 5 } }, async (jobs) => {
      seen.push(jobs);
      return [{ ok: false as const, error: new Error('refused downstream') }];
    });
    const job = {
      id: '7',
      task: 'one-of-batch',
      queue: 'default',
      attempt: 2,
      maxAttempts: 5,
      priority: 0,
      lock: null,
      queueingLock: null,
      group: null,
      runAt: new Date(0),
      createdAt: new Date(0),
    };
    const ctx = {
      job,
      signal: new AbortController().signal,
      log: createLogger({ level: 'silent' }),
      transaction: () => Promise.reject(new Error('not offered')),
      defer: () => Promise.reject(new Error('not offered')),
      progress: () => {},
    };
    await assert.rejects(Promise.resolve(task.options.handler({ n: 1 }, ctx)), /refused downstream/);
    assert.deepEqual(seen, [[{ ...job, args: { n: 1 } }]]);
  });

  it('bad batch options are one-line errors naming the option', () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    const cases: [unknown, RegExp][] = [
      [{ batch: { size: 0 } }, /task "b" batch.size 0 is invalid: expected an integer from 1 to 1000/],
      [{ batch: { size: 2.5 } }, /batch.size 2.5 is invalid/],
      [{ batch: { size: 10, maxWait: 'soon' } }, /task "b" batch.maxWait/],
      [
        { batch: { size: 10, maxWait: { hours: 2 } } },
        /batch.maxWait 7200000 ms is invalid: expected at most one hour/,
      ],
      [{ batch: null }, /task "b" batch is invalid: expected \{ size, maxWait \}/],
      [{ batch: { size: 10 }, transaction: true }, /cannot have both batch and transaction/],
    ];
    for (const [options, message] of cases) {
      assert.throws(
        () => app.task('b', options as never, async () => {}),
        (error: unknown) =>
          error instanceof ValidationError && message.test(error.message) && !error.message.includes('\n'),
        String(message),
      );
    }
  });

  it('a worker killed with SIGKILL mid-batch: another worker recovers the jobs and runs them again, each done once', async () => {
    const quick = ['--stall-timeout', '1s', '--heartbeat-interval', '200ms', '--poll-interval', '100ms'];
    await t.pool.query(`DELETE FROM "${t.schema}".runs`);
    const first = spawnWorker(t.schema, [...quick, '--concurrency', '2'], BATCH_APP);
    alive.push(first);
    await workerStarted(t.pool, t.schema, first);
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    try {
      for (let n = 0; n < 8; n += 1) await app.defer('batch-hang-once', { n });
    } finally {
      await app.close();
    }
    const startedFirst = async () =>
      (
        await t.pool.query(
          `SELECT count(DISTINCT job_id)::int AS n FROM "${t.schema}".runs WHERE what = 'started' AND attempt = 1`,
        )
      ).rows[0].n as number;
    await waitFor('all 8 jobs to start in the first worker', async () => (await startedFirst()) === 8);
    first.child.kill('SIGKILL');
    await first.exited;
    const second = spawnWorker(t.schema, [...quick, '--concurrency', '2'], BATCH_APP);
    alive.push(second);
    await waitFor('every job to be done', async () => (await left('batch-hang-once')) === 0, 30_000);
    const { rows } = await t.pool.query(
      `SELECT job_id, array_agg(what || ':' || attempt || ':' || (pid = $1)::text ORDER BY attempt, what) AS runs
       FROM "${t.schema}".runs GROUP BY job_id`,
      [first.child.pid],
    );
    assert.equal(rows.length, 8);
    for (const row of rows) {
      // Started by the first worker (attempt 1), then started and done once by the second (attempt 2).
      assert.deepEqual(row.runs, ['started:1:true', 'done:2:false', 'started:2:false'], JSON.stringify(row));
    }
    second.child.kill('SIGTERM');
    assert.equal(await second.exited, 0);
  });

  it('SIGTERM mid-batch: the batch is aborted and its jobs go back to todo uncounted', async () => {
    await t.pool.query(`DELETE FROM "${t.schema}".runs`);
    const worker = spawnWorker(
      t.schema,
      ['--stall-timeout', '10s', '--poll-interval', '100ms', '--shutdown-timeout', '300ms'],
      BATCH_APP,
    );
    alive.push(worker);
    await workerStarted(t.pool, t.schema, worker);
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    try {
      for (let n = 0; n < 3; n += 1) await app.defer('batch-hang-once', { n });
    } finally {
      await app.close();
    }
    await waitFor(
      'the batch to start',
      async () =>
        (await t.pool.query(`SELECT count(*)::int AS n FROM "${t.schema}".runs WHERE what = 'started'`))
          .rows[0].n === 3,
    );
    worker.child.kill('SIGTERM');
    assert.equal(await worker.exited, 0);
    const rows = await rowsOf('batch-hang-once');
    assert.deepEqual(
      rows.map((r) => [r.status, r.attempts]),
      [
        ['todo', 0],
        ['todo', 0],
        ['todo', 0],
      ],
    );
    assert.match(worker.output(), /3 unfinished job\(s\) returned to todo without counting the attempt/);
  });
});
