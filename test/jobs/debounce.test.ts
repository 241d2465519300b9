/**
 * Debounce / replace on a queueing lock (docs/debounce.md): `onConflict: 'replace'` updates
 * the waiting job's args and run time, `'replace-args'` its args only; a running job is left
 * alone; concurrent replaces leave one waiting job with the last writer's args.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { createApp } from '../../src/app.js';
import { AlreadyEnqueued, ValidationError } from '../../src/errors.js';
import { startFaultProxy } from '../faultProxy.js';
import { databaseUrl, isolatedApp, runCli, type TestApp } from '../helpers.js';
import { waitFor } from './support.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('jobs_debounce');
});
after(async () => t.cleanup());

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const jobsWith = async (queueingLock: string) =>
  (
    await t.pool.query(
      `SELECT j.id::text, j.status, j.args, j.run_at, j.attempts FROM "${t.schema}".jobs j
       WHERE j.queueing_lock = $1 ORDER BY j.id`,
      [queueingLock],
    )
  ).rows as { id: string; status: string; args: unknown; run_at: Date; attempts: number }[];
const jobCount = async () =>
  Number((await t.pool.query(`SELECT count(*) FROM "${t.schema}".jobs`)).rows[0].count);

describe('onConflict replace', () => {
  it("'replace' updates the waiting job's args and run time; 'replace-args' its args only", async () => {
    const task = t.app.task('replace-basics', {}, async () => {});
    const first = await task.defer({ v: 1 }, { queueingLock: 'r:1', runAt: '2031-01-01T00:00:00Z' });
    assert.ok(first.enqueued);
    const replaced = await task.defer(
      { v: 2 },
      { queueingLock: 'r:1', runAt: '2032-02-02T00:00:00Z', onConflict: 'replace' },
    );
    assert.deepEqual(replaced, { enqueued: false, existingId: first.id, replaced: true });
    let [job] = await jobsWith('r:1');
    assert.deepEqual(job!.args, { v: 2 });
    assert.deepEqual(job!.run_at, new Date('2032-02-02T00:00:00Z'));

    const argsOnly = await task.defer(
      { v: 3 },
      { queueingLock: 'r:1', runAt: '2033-03-03T00:00:00Z', onConflict: 'replace-args' },
    );
    assert.deepEqual(argsOnly, { enqueued: false, existingId: first.id, replaced: true });
    [job] = await jobsWith('r:1');
    assert.deepEqual(job!.args, { v: 3 });
    assert.deepEqual(job!.run_at, new Date('2032-02-02T00:00:00Z'), 'replace-args keeps the run time');
    assert.equal((await jobsWith('r:1')).length, 1);

    // No waiting job yet: replace enqueues, like any defer.
    const fresh = await task.defer({ v: 1 }, { queueingLock: 'r:2', onConflict: 'replace' });
    assert.ok(fresh.enqueued);
  });

  it('the SQL path replaces the same way, and says enqueued = false', async () => {
    const q = `"${t.schema}"`;
    const first = await t.pool.query(
      `SELECT id::text, enqueued FROM ${q}.defer_job('sql-replace', '{"v":1}', queueing_lock => 's:1',
         run_at => '2031-01-01T00:00:00Z')`,
    );
    const second = await t.pool.query(
      `SELECT id::text, enqueued FROM ${q}.defer_job('sql-replace', '{"v":2}', queueing_lock => 's:1',
         on_conflict => 'replace-args', run_at => now())`,
    );
    assert.deepEqual(second.rows[0], { id: first.rows[0].id, enqueued: false });
    const [job] = await jobsWith('s:1');
    assert.deepEqual(job!.args, { v: 2 });
    assert.deepEqual(job!.run_at, new Date('2031-01-01T00:00:00Z'));
    // Deferred in one defer_jobs call, the later row replaces the earlier one.
    const many = await t.app
      .task('many-replace', {}, async () => {})
      .deferMany([
        { args: { n: 1 }, queueingLock: 'm:1', onConflict: 'replace' },
        { args: { n: 2 }, queueingLock: 'm:1', onConflict: 'replace' },
      ]);
    assert.ok(many[0]!.enqueued);
    assert.deepEqual(many[1], {
      enqueued: false,
      existingId: (many[0] as { id: string }).id,
      replaced: true,
    });
    assert.deepEqual(
      (await jobsWith('m:1')).map((j) => j.args),
      [{ n: 2 }],
    );
  });

  it('a running job is not touched: the replace enqueues a waiting job beside it, which later replaces update', async () => {
    const task = t.app.task('replace-running', {}, async () => {});
    const first = await task.defer({ v: 1 }, { queueingLock: 'run:1' });
    assert.ok(first.enqueued);
    await t.pool.query(`UPDATE "${t.schema}".jobs SET status = 'doing', attempts = 1 WHERE id = $1`, [
      first.id,
    ]);
    const beside = await task.defer({ v: 2 }, { queueingLock: 'run:1', onConflict: 'replace' });
    assert.ok(beside.enqueued, 'a new waiting job');
    const again = await task.defer({ v: 3 }, { queueingLock: 'run:1', onConflict: 'replace' });
    assert.deepEqual(again, { enqueued: false, existingId: beside.id, replaced: true });
    const jobs = await jobsWith('run:1');
    assert.deepEqual(
      jobs.map((j) => [j.id, j.status, j.args, j.attempts]),
      [
        [first.id, 'doing', { v: 1 }, 1],
        [beside.id, 'todo', { v: 3 }, 0],
      ],
    );
  });

  it('a replace never takes over a waiting job of another task: AlreadyEnqueued naming it, nothing changed', async () => {
    const a = t.app.task('replace-a', {}, async () => {});
    const b = t.app.task('replace-b', {}, async () => {});
    const first = await a.defer({ v: 1 }, { queueingLock: 'x:1' });
    assert.ok(first.enqueued);
    await assert.rejects(
      b.defer({ v: 2 }, { queueingLock: 'x:1', onConflict: 'replace' }),
      (error: unknown) => {
        assert.ok(error instanceof AlreadyEnqueued);
        assert.equal(error.existingId, first.id);
        assert.equal(error.existingTask, 'replace-a');
        assert.match(error.message, /replaces only a waiting job of the same task/);
        return true;
      },
    );
    assert.deepEqual(
      (await jobsWith('x:1')).map((j) => j.args),
      [{ v: 1 }],
    );
  });

  it('bad modes are one-line errors and write nothing, from TypeScript, SQL and the CLI', async () => {
    const task = t.app.task('replace-bad', {}, async () => {});
    const before = await jobCount();
    await assert.rejects(
      task.defer({}, { queueingLock: 'b:1', onConflict: 'upsert' as 'replace' }),
      (error: unknown) =>
        error instanceof ValidationError &&
        /onConflict "upsert" is invalid: expected 'error', 'ignore', 'replace' or 'replace-args'/.test(
          error.message,
        ),
    );
    await assert.rejects(
      task.defer({}, { onConflict: 'replace' }),
      (error: unknown) => error instanceof ValidationError && /needs a queueingLock/.test(error.message),
    );
    await assert.rejects(
      t.pool.query(
        `SELECT * FROM "${t.schema}".defer_job('replace-bad', on_conflict => 'upsert', queueing_lock => 'b')`,
      ),
      /on_conflict upsert is invalid/,
    );
    await assert.rejects(
      t.pool.query(`SELECT * FROM "${t.schema}".defer_job('replace-bad', on_conflict => 'replace')`),
      /needs a queueing_lock/,
    );
    const env = { DATABASE_URL: databaseUrl(), OUTBATCH_SCHEMA: t.schema };
    const cli = await runCli(
      ['defer', 'replace-bad', '--queueing-lock', 'b:1', '--on-conflict', 'upsert'],
      env,
    );
    assert.equal(cli.code, 2);
    assert.match(
      cli.stderr.trim(),
      /^.*--on-conflict "upsert" is invalid: expected error, ignore, replace, replace-args$/,
    );
    assert.equal(cli.stderr.trim().split('\n').length, 1);
    assert.equal(await jobCount(), before);
  });

  it('the CLI replaces: --on-conflict replace and replace-args', async () => {
    const env = { DATABASE_URL: databaseUrl(), OUTBATCH_SCHEMA: t.schema };
    const first = await runCli(
      ['defer', 'cli-replace', '--queueing-lock', 'c:1', '--args', '{"v":1}', '--json'],
      env,
    );
    assert.equal(first.code, 0, first.stderr);
    const { id } = JSON.parse(first.stdout) as { id: string };
    const second = await runCli(
      [
        'defer',
        'cli-replace',
        '--queueing-lock',
        'c:1',
        '--args',
        '{"v":2}',
        '--delay',
        '1h',
        '--on-conflict',
        'replace',
      ],
      env,
    );
    assert.equal(second.code, 0, second.stderr);
    assert.match(
      second.stdout,
      new RegExp(`replaced the args and run time of job ${id}, waiting with queueing lock "c:1"`),
    );
    const third = await runCli(
      [
        'defer',
        'cli-replace',
        '--queueing-lock',
        'c:1',
        '--args',
        '{"v":3}',
        '--on-conflict',
        'replace-args',
        '--json',
      ],
      env,
    );
    assert.equal(third.code, 0, third.stderr);
    assert.deepEqual(JSON.parse(third.stdout), { enqueued: false, existingId: id, replaced: true });
    const [job] = await jobsWith('c:1');
    assert.deepEqual(job!.args, { v: 3 });
    assert.ok(job!.run_at.getTime() > Date.now() + 50 * 60_000, 'the run time of the replace, an hour on');
  });

  it('concurrent replaces from several connections: exactly one waiting job, with the args of the last to commit', async () => {
    const writers = 6;
    const perWriter = 25;
    const q = `"${t.schema}"`;
    await t.pool.query(`CREATE TABLE ${q}.replace_log (seq bigserial PRIMARY KEY, writer int, n int)`);
    const pools = Array.from(
      { length: writers },
      () => new pg.Pool({ connectionString: databaseUrl(), max: 1 }),
    );
    const enqueued: string[] = [];
    try {
      await Promise.all(
        pools.map(async (pool, writer) => {
          for (let n = 0; n < perWriter; n += 1) {
            const client = await pool.connect();
            try {
              await client.query('BEGIN');
              const { rows } = await client.query(
                `SELECT id::text, enqueued FROM ${q}.defer_job('concurrent-replace', $1::jsonb,
                   queueing_lock => 'hot', on_conflict => 'replace', run_at => now() + interval '1 hour')`,
                [JSON.stringify({ writer, n })],
              );
              if (rows[0].enqueued) enqueued.push(rows[0].id);
              // Drawn while this transaction holds the waiting job's row lock, which the
              // next replacer waits for: sequence order is commit order.
              await client.query(`INSERT INTO ${q}.replace_log (writer, n) VALUES ($1, $2)`, [writer, n]);
              await client.query('COMMIT');
            } finally {
              client.release();
            }
          }
        }),
      );
    } finally {
      await Promise.all(pools.map((pool) => pool.end()));
    }
    const jobs = await jobsWith('hot');
    assert.equal(jobs.length, 1, 'exactly one job');
    assert.equal(jobs[0]!.status, 'todo');
    assert.deepEqual(enqueued, [jobs[0]!.id], 'one defer enqueued it, every other replaced it');
    const last = (await t.pool.query(`SELECT writer, n FROM ${q}.replace_log ORDER BY seq DESC LIMIT 1`))
      .rows[0];
    assert.deepEqual(jobs[0]!.args, last, "the last writer's args");
    const logged = (await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.replace_log`)).rows[0].n;
    assert.equal(logged, writers * perWriter);
  });

  it("replaces racing a worker's claims: every enqueued job runs once, and the last run has the last writer's args", async () => {
    const q = `"${t.schema}"`;
    await t.pool.query(`CREATE TABLE ${q}.race_log (seq bigserial PRIMARY KEY, writer int, n int)`);
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    const runs: { id: string; args: unknown }[] = [];
    app.task('race-replace', {}, async (args: unknown, ctx) => {
      runs.push({ id: ctx.job.id, args });
      await sleep(5);
    });
    const controller = new AbortController();
    const running = app.run({ concurrency: 4, pollInterval: 100, signal: controller.signal });
    const pools = Array.from({ length: 4 }, () => new pg.Pool({ connectionString: databaseUrl(), max: 1 }));
    const enqueued: string[] = [];
    try {
      await Promise.all(
        pools.map(async (pool, writer) => {
          for (let n = 0; n < 30; n += 1) {
            const client = await pool.connect();
            try {
              await client.query('BEGIN');
              // Due now, and `lock` with the same key: runs happen one at a time, in id order.
              const { rows } = await client.query(
                `SELECT id::text, enqueued FROM ${q}.defer_job('race-replace', $1::jsonb,
                   queueing_lock => 'race', lock => 'race', on_conflict => 'replace')`,
                [JSON.stringify({ writer, n })],
              );
              if (rows[0].enqueued) enqueued.push(rows[0].id);
              await client.query(`INSERT INTO ${q}.race_log (writer, n) VALUES ($1, $2)`, [writer, n]);
              await client.query('COMMIT');
            } finally {
              client.release();
            }
          }
        }),
      );
      await waitFor('every enqueued job to run', async () => (await jobsWith('race')).length === 0);
    } finally {
      await Promise.all(pools.map((pool) => pool.end()));
      controller.abort();
      await running;
      await app.close();
    }
    assert.deepEqual(
      runs.map((r) => r.id),
      [...enqueued].sort((a, b) => Number(a) - Number(b)),
      'each enqueued job ran once, in order',
    );
    const last = (await t.pool.query(`SELECT writer, n FROM ${q}.race_log ORDER BY seq DESC LIMIT 1`))
      .rows[0];
    assert.deepEqual(runs.at(-1)!.args, last, "the last run has the last writer's args");
  });

  it('a replace whose reply is lost: deferring again is safe — one waiting job with the args, or one more run if it started', async () => {
    const proxy = await startFaultProxy(databaseUrl());
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema });
    try {
      const task = app.task('lost-replace', {}, async () => {});
      const later = { queueingLock: 'lost:1', delay: { hours: 1 }, onConflict: 'replace' } as const;
      const first = await task.defer({ v: 1 }, later);
      assert.ok(first.enqueued);
      const { fired } = proxy.addRule({ match: `outbatch_defer_${t.schema}`, action: 'lose-reply' });
      await assert.rejects(task.defer({ v: 2 }, later));
      await fired;
      assert.deepEqual(
        (await jobsWith('lost:1')).map((j) => j.args),
        [{ v: 2 }],
        'the server did it',
      );
      assert.deepEqual(await task.defer({ v: 2 }, later), {
        enqueued: false,
        existingId: first.id,
        replaced: true,
      });
      assert.deepEqual(
        (await jobsWith('lost:1')).map((j) => [j.id, j.status, j.args]),
        [[first.id, 'todo', { v: 2 }]],
      );

      // A worker took the job between the lost reply and the retry: the retry enqueues one
      // more run with the same args (at-least-once), beside the running one.
      const { fired: lost } = proxy.addRule({ match: `outbatch_defer_${t.schema}`, action: 'lose-reply' });
      await assert.rejects(task.defer({ v: 3 }, later));
      await lost;
      await t.pool.query(`UPDATE "${t.schema}".jobs SET status = 'doing', attempts = 1 WHERE id = $1`, [
        first.id,
      ]);
      const retried = await task.defer({ v: 3 }, later);
      assert.ok(retried.enqueued);
      assert.deepEqual(
        (await jobsWith('lost:1')).map((j) => [j.id, j.status, j.args]),
        [
          [first.id, 'doing', { v: 3 }],
          [retried.id, 'todo', { v: 3 }],
        ],
      );
    } finally {
      await app.close();
      await proxy.close();
    }
  });

  it("a replace keeps a retry-waiting job's backoff: new args, but no attempt before the backoff ends", async () => {
    // Found in review: 'replace' set run_at to now (or the delay) even on a job waiting out
    // its retry backoff, while keeping its attempt count — so a burst of replaces during an
    // outage ran the job back to back and dead-lettered it within seconds, whatever the
    // task's backoff said.
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    const runs: number[] = [];
    const task = app.task(
      'replace-backoff',
      { retry: { attempts: 3, backoff: { initial: { hours: 1 } } } },
      async (args: { v: number }) => {
        runs.push(args.v);
        throw new Error('downstream is down');
      },
    );
    const controller = new AbortController();
    const running = app.run({ concurrency: 1, pollInterval: 100, signal: controller.signal });
    try {
      await task.defer({ v: 1 }, { queueingLock: 'backoff:1' });
      await waitFor('the first attempt to fail and wait out its backoff', async () => {
        const [job] = await jobsWith('backoff:1');
        return runs.length === 1 && job?.status === 'todo' && job.attempts === 1;
      });
      const [waiting] = await jobsWith('backoff:1');
      assert.ok(waiting!.run_at.getTime() > Date.now() + 30 * 60_000, 'an hour of backoff');

      // Replaces during the backoff, with no run time: the args change, the run time stays.
      for (const v of [2, 3, 4]) {
        const result = await task.defer({ v }, { queueingLock: 'backoff:1', onConflict: 'replace' });
        assert.deepEqual(result, { enqueued: false, existingId: waiting!.id, replaced: true });
      }
      let [job] = await jobsWith('backoff:1');
      assert.deepEqual(
        [job!.status, job!.attempts, job!.args, job!.run_at],
        ['todo', 1, { v: 4 }, waiting!.run_at],
        'the backoff is kept',
      );
      // A run time later than the backoff's is taken: a debounce can only push the job out.
      const later = new Date(waiting!.run_at.getTime() + 60_000);
      await task.defer({ v: 5 }, { queueingLock: 'backoff:1', runAt: later, onConflict: 'replace' });
      [job] = await jobsWith('backoff:1');
      assert.deepEqual([job!.args, job!.run_at], [{ v: 5 }, later]);
      // Nothing ran meanwhile: one poll later the worker still has nothing due.
      const polled = Date.now();
      await waitFor('two poll intervals', async () => Date.now() - polled > 300);
      assert.deepEqual(runs, [1], 'one attempt so far');
      assert.equal((await jobsWith('backoff:1')).length, 1);
    } finally {
      controller.abort();
      await running;
      await app.close();
    }
  });

  it('debounce with a real worker: 20 defers 100 ms apart with a 1 s delay run the handler once, with the last args', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    const runs: number[] = [];
    const task = app.task('debounced', {}, async (args: { n: number }) => {
      runs.push(args.n);
    });
    const controller = new AbortController();
    const running = app.run({ concurrency: 2, pollInterval: 200, signal: controller.signal });
    try {
      const results = [];
      const returnedAt: number[] = [];
      for (let n = 1; n <= 20; n += 1) {
        results.push(
          await task.defer({ n }, { queueingLock: 'search-index', delay: 1_000, onConflict: 'replace' }),
        );
        returnedAt.push(Date.now());
        if (n < 20) await sleep(100);
      }
      const enqueues = results.filter((r) => r.enqueued).length;
      await waitFor(
        'the debounced runs',
        async () => runs.length === enqueues && (await jobsWith('search-index')).length === 0,
      );
      assert.equal(runs.at(-1), 20, 'the last args');
      // A job runs before a later defer only if that defer came more than the delay after
      // the one before (a starved machine); then that defer enqueues afresh. So runs always
      // equal enqueues, and with every gap under the delay there is exactly one.
      const longestGap = Math.max(...returnedAt.slice(1).map((at, i) => at - returnedAt[i]!));
      if (longestGap < 900) assert.deepEqual(runs, [20], 'one run');
      assert.equal(results.filter((r) => !r.enqueued && r.replaced).length, 20 - enqueues);
    } finally {
      controller.abort();
      await running;
      await app.close();
    }
  });
});
