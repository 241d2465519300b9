/**
 * outbatch behind PgBouncer (Debian's 1.18: no protocol-level prepared statements) in
 * transaction mode, with two server connections for many client connections, so that
 * consecutive transactions of one client run on different server connections: any session
 * state outbatch relied on (a named statement, a session SET or advisory lock, LISTEN, a
 * startup option) would break these tests. Outcomes are counted, never timed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { firstValueFrom, take, toArray } from 'rxjs';
import { type App, createApp } from '../../src/app.js';
import { createPool } from '../../src/db/connection.js';
import { abandonConnection } from '../../src/db/deadline.js';
import { listen } from '../../src/db/listen.js';
import { loadMigrations } from '../../src/db/migrate.js';
import type { JobContext } from '../../src/jobs/task.js';
import { appliedTable, captureLog, countApplied, databaseUrl, runCli, uniqueSchema } from '../helpers.js';
import { waitFor } from '../jobs/support.js';
import { type Bouncer, missingReason, startBouncer } from '../pgbouncer.js';

const skip = missingReason();
const NO_LISTEN_WARNING = 'behind a transaction pooler with no listenUrl';

describe('behind PgBouncer in transaction mode', { skip }, () => {
  let bouncer: Bouncer;
  let direct: pg.Pool;
  const schemas: string[] = [];
  const apps: App[] = [];

  /** An app in `schema` through PgBouncer (detected, not configured), closed after the file. */
  function bouncedApp(schema: string, options: Parameters<typeof createApp>[0] = {}): App {
    const app = createApp({ databaseUrl: bouncer.url, schema, ...options });
    apps.push(app);
    if (!schemas.includes(schema)) schemas.push(schema);
    return app;
  }

  const count = async (sql: string, values: unknown[] = []) =>
    Number((await direct.query(sql, values)).rows[0].count);

  before(async () => {
    bouncer = await startBouncer({ poolSize: 2 });
    direct = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
  });

  after(async () => {
    for (const app of apps) await app.close();
    for (const schema of schemas) await direct.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await direct.end();
    await bouncer.stop();
  });

  it('detects PgBouncer and turns prepared statements off; a direct URL is taken for direct', async () => {
    const schema = uniqueSchema('pgb_detect');
    const route = (await bouncedApp(schema).database()).route;
    assert.deepEqual(route, { pooler: 'pgbouncer', preparedStatements: false, listenUrl: undefined });
    const straight = createApp({ databaseUrl: databaseUrl(), schema });
    apps.push(straight);
    assert.equal((await straight.database()).route.pooler, 'none');
    assert.equal((await straight.database()).route.preparedStatements, true);
  });

  it('refuses bad pooler settings in one line naming the option', () => {
    assert.throws(
      () => createApp({ databaseUrl: bouncer.url, listenUrl: 'direct please' }),
      /^ValidationError: listenUrl is not a valid URL: expected postgres:\/\//,
    );
    assert.throws(
      () => createApp({ databaseUrl: bouncer.url, listenUrl: 'http://127.0.0.1:5432/test' }),
      /listenUrl has protocol "http:"/,
    );
    assert.throws(
      () => createApp({ databaseUrl: bouncer.url, pool: { pooler: 'pgpool' as never } }),
      /pool\.pooler "pgpool" is invalid: expected "pgbouncer" .* or "none"/,
    );
  });

  it('a worker told pooler "none" in front of PgBouncer fails at once, in one line saying so', async () => {
    const schema = uniqueSchema('pgb_none');
    await bouncedApp(schema).migrate();
    // The control pool's lock_timeout is a startup parameter PgBouncer refuses: 08P01, which
    // looked like connection trouble and was retried for a minute.
    const wrong = bouncedApp(schema, { pool: { pooler: 'none' } });
    await assert.rejects(wrong.run({ signal: AbortSignal.timeout(30_000) }), {
      name: 'ValidationError',
      message:
        'the server refused startup parameter "lock_timeout", as PgBouncer does: pool.pooler (OUTBATCH_POOLER) is "none" but a transaction pooler is in the way; unset it to detect the pooler, or set "pgbouncer"',
    });
  });

  it('two migrators at once through PgBouncer apply every migration exactly once', async () => {
    const schema = uniqueSchema('pgb_migrate');
    const [a, b] = [bouncedApp(schema), bouncedApp(schema)];
    const [ra, rb] = await Promise.all([a.migrate(), b.migrate()]);
    const files = await loadMigrations();
    // One of them installed everything; the other found nothing left to do.
    assert.equal(ra.applied.length + rb.applied.length, files.length);
    assert.equal(await count(`SELECT count(*) FROM "${schema}".migrations`), files.length);
    assert.deepEqual((await b.migrate()).applied, []);
  });

  it('the CLI migrates, appends and lists jobs through PgBouncer', async () => {
    const schema = uniqueSchema('pgb_cli');
    schemas.push(schema);
    const env = { DATABASE_URL: bouncer.url };
    const migrated = await runCli(['migrate', '--schema', schema], env);
    assert.equal(migrated.code, 0, migrated.stderr);
    for (const key of ['k1', 'k1', 'k2']) {
      const appended = await runCli(
        [
          'append',
          '--schema',
          schema,
          '--stream',
          'cli-1',
          '--type',
          'Noted',
          '--data',
          '{}',
          '--idempotency-key',
          key,
        ],
        env,
      );
      assert.equal(appended.code, 0, appended.stderr);
    }
    assert.equal(await count(`SELECT count(*) FROM "${schema}".events`), 2);
    const doctor = await runCli(['doctor', '--schema', schema], env);
    assert.match(
      doctor.stdout,
      /connected to 127\.0\.0\.1:\d+ through a transaction pooler \(prepared statements off, LISTEN off: polling\)/,
    );
    const listed = await runCli(['jobs', 'list', '--schema', schema, '--json'], env);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(JSON.parse(listed.stdout), []);
    // A command that never listens says nothing about LISTEN.
    assert.doesNotMatch(listed.stderr, new RegExp(NO_LISTEN_WARNING));
    for (const [name, value, message] of [
      ['OUTBATCH_POOLER', 'pgpool', 'outbatch: OUTBATCH_POOLER "pgpool" is invalid: expected "pgbouncer"'],
      ['OUTBATCH_LISTEN_URL', 'localhost:5432', 'outbatch: OUTBATCH_LISTEN_URL has protocol "localhost:"'],
    ]) {
      const refused = await runCli(['jobs', 'list', '--schema', schema], { ...env, [name!]: value });
      assert.equal(refused.code, 2, refused.stderr);
      assert.equal(refused.stderr.trim().split('\n').length, 1, refused.stderr);
      assert.ok(refused.stderr.startsWith(message!), refused.stderr);
    }
  });

  it('a listenUrl that goes through PgBouncer is refused in one line', async () => {
    const { log } = captureLog();
    await assert.rejects(
      firstValueFrom(listen({ url: bouncer.url, channels: ['outbatch_test'], log })),
      /goes through a connection pooler: set listenUrl \(OUTBATCH_LISTEN_URL\) to PostgreSQL itself/,
    );
  });

  it('gives up on a connection without terminating a backend by the pid PgBouncer gave it', async () => {
    const { log } = captureLog();
    const terminations = async (url: string, pooler: 'pgbouncer' | 'none') => {
      const pool = createPool(url, log, { pooler });
      const calls: unknown[] = [];
      const other = {
        query: async (...args: unknown[]) => {
          calls.push(args);
          return { rows: [] } as never;
        },
      };
      try {
        await abandonConnection(await pool.connect(), other, log);
      } finally {
        await pool.end();
      }
      return calls.length;
    };
    assert.equal(await terminations(bouncer.url, 'pgbouncer'), 0);
    assert.equal(await terminations(databaseUrl(), 'none'), 1);
  });

  describe('appends and defers', () => {
    const schema = uniqueSchema('pgb_append');
    let app: App;

    before(async () => {
      app = bouncedApp(schema);
      await app.migrate();
      app.task('noted', {}, async () => {});
    });

    it('appends one event, a bulk by COPY and events with idempotency keys', async () => {
      await app.events.append({ stream: 'one', type: 'Single', data: { n: 1 } });
      const bulk = Array.from({ length: 1500 }, (_, i) => ({
        stream: `bulk-${i % 7}`,
        type: 'Bulk',
        data: { i },
      }));
      assert.equal((await app.events.append(bulk)).length, 1500);
      const keyed = { stream: 'keyed', type: 'Keyed', data: {}, idempotencyKey: 'once' };
      const [first, again] = [await app.events.append(keyed), await app.events.append(keyed)];
      assert.equal(first.duplicate, false);
      assert.equal(again.duplicate, true);
      assert.equal(again.position, first.position);
      // A single append is the statement outbatch prepares when direct: many in a row,
      // each on whichever server connection PgBouncer gives.
      for (let i = 0; i < 20; i++) await app.events.append({ stream: 'many', type: 'Single', data: { i } });
      assert.equal(await count(`SELECT count(*) FROM "${schema}".events`), 1 + 1500 + 1 + 20);
    });

    it('follows the log by polling, with no listenUrl', async () => {
      const firstThree = await firstValueFrom(
        app.events.follow(undefined, { pollIntervalMs: 100 }).pipe(take(3), toArray()),
      );
      assert.deepEqual(
        firstThree.map((event) => event.type),
        ['Single', 'Bulk', 'Bulk'],
      );
    });

    it("appends and defers in the caller's transaction: rolled back together, committed together", async () => {
      const client = new pg.Client(bouncer.url);
      await client.connect();
      try {
        const before = await count(`SELECT count(*) FROM "${schema}".events`);
        for (const end of ['ROLLBACK', 'COMMIT']) {
          await client.query('BEGIN');
          await app.events.append({ stream: 'tx', type: 'InTx', data: { end } }, { client });
          await app.events.append(
            Array.from({ length: 1200 }, (_, i) => ({ stream: `tx-${i}`, type: 'InTxBulk', data: {} })),
            { client },
          );
          await app.defer('noted', { end }, { client });
          await client.query(end);
        }
        assert.equal(await count(`SELECT count(*) FROM "${schema}".events`), before + 1 + 1200);
        assert.equal(await count(`SELECT count(*) FROM "${schema}".jobs WHERE task = 'noted'`), 1);
      } finally {
        await client.end();
      }
    });

    it('outbatch still prepares on its own direct connections', async () => {
      const straight = createApp({ databaseUrl: databaseUrl(), schema });
      apps.push(straight);
      const own = await (await straight.database()).pool.connect();
      try {
        await straight.events.append({ stream: 'own', type: 'Single', data: {} }, { client: own });
        const prepared = await own.query('SELECT count(*) FROM pg_prepared_statements');
        assert.equal(Number(prepared.rows[0].count), 1);
      } finally {
        own.release();
      }
    });

    it('prepares no statement on a client the caller hands in, even a direct one', async () => {
      const client = new pg.Client(databaseUrl());
      await client.connect();
      try {
        for (let i = 0; i < 3; i++) {
          await app.events.append({ stream: 'caller', type: 'Single', data: { i } }, { client });
          await app.defer('noted', { i }, { client });
        }
        const prepared = await client.query('SELECT count(*) FROM pg_prepared_statements');
        assert.equal(Number(prepared.rows[0].count), 0);
      } finally {
        await client.end();
      }
    });
  });

  describe('a worker, a processor, a schedule and a replay, waking by polling', () => {
    const schema = uniqueSchema('pgb_worker');
    const q = `"${schema}"`;
    const captured = captureLog('warn');
    const controller = new AbortController();
    let app: App;
    let running: Promise<void>;
    let lockedInFlight = 0;
    let lockedMostAtOnce = 0;
    const EVENTS = 1200;

    before(async () => {
      app = bouncedApp(schema, { logger: captured.log });
      await app.migrate();
      await direct.query(
        `CREATE TABLE ${q}.runs (task text NOT NULL, job_id bigint NOT NULL, attempt int NOT NULL)`,
      );
      await direct.query(appliedTable(q));
      const record = (task: string) => async (_args: unknown, ctx: JobContext) => {
        await ctx.tx!.query(`INSERT INTO ${q}.runs VALUES ($1, $2, $3)`, [task, ctx.job.id, ctx.job.attempt]);
      };
      app.task(
        'flaky',
        { transaction: true, retry: { attempts: 3, backoff: { initial: { milliseconds: 10 } } } },
        async (args, ctx) => {
          // Recorded outside the job's transaction, which the failure rolls back.
          await direct.query(`INSERT INTO ${q}.runs VALUES ('flaky-attempt', $1, $2)`, [
            ctx.job.id,
            ctx.job.attempt,
          ]);
          if (ctx.job.attempt === 1) throw new Error('first attempts fail');
          await record('flaky')(args, ctx);
        },
      );
      app.task('locked', { transaction: true }, async (args, ctx) => {
        lockedInFlight += 1;
        lockedMostAtOnce = Math.max(lockedMostAtOnce, lockedInFlight);
        await new Promise((resolve) => setTimeout(resolve, 20));
        lockedInFlight -= 1;
        await record('locked')(args, ctx);
      });
      const tick = app.task('tick', { transaction: true }, record('tick'));
      app.schedule('every-second', { every: { seconds: 1 } }, tick, {});
      app.processor('counter', { trigger: { every: { seconds: 1 } }, batchSize: 250 }, (events$, ctx) =>
        events$.pipe(countApplied(ctx.tx, q)),
      );
      // Appended before the worker starts: the processor catches up on them.
      await app.events.append(
        Array.from({ length: EVENTS }, (_, i) => ({ stream: `s-${i % 13}`, type: 'T', data: { i } })),
      );
      for (let i = 0; i < 20; i++) await app.defer('flaky', { i });
      for (let i = 0; i < 5; i++) await app.defer('locked', { i }, { lock: 'one-at-a-time' });
      running = app.run({ concurrency: 4, pollInterval: { milliseconds: 100 }, signal: controller.signal });
    });

    after(async () => {
      controller.abort();
      await running;
    });

    it('runs every job: the flaky ones twice (a failure, then a retry), the locked ones one at a time', async () => {
      await waitFor(
        'the jobs to succeed',
        async () => (await count(`SELECT count(*) FROM ${q}.runs WHERE task IN ('flaky', 'locked')`)) === 25,
      );
      assert.equal(
        await count(`SELECT count(DISTINCT job_id) FROM ${q}.runs WHERE task = 'flaky' AND attempt = 2`),
        20,
      );
      assert.equal(await count(`SELECT count(*) FROM ${q}.runs WHERE task = 'flaky-attempt'`), 40);
      assert.equal(await count(`SELECT count(*) FROM ${q}.runs WHERE task = 'locked'`), 5);
      assert.equal(lockedMostAtOnce, 1);
      // Many client connections shared two server connections: transactions hopped.
      const adminConsole = new pg.Client(bouncer.adminUrl);
      await adminConsole.connect();
      try {
        const clients = (await adminConsole.query('SHOW CLIENTS')).rows.filter(
          (row) => row.database !== 'pgbouncer',
        );
        const servers = (await adminConsole.query('SHOW SERVERS')).rows;
        assert.ok(servers.length <= 2, `${servers.length} server connections`);
        assert.ok(clients.length > servers.length, `${clients.length} client connections`);
      } finally {
        await adminConsole.end();
      }
      assert.equal(
        await count(
          `SELECT count(*) FROM ${q}.jobs WHERE task IN ('flaky', 'locked') AND status <> 'succeeded'`,
        ),
        0,
      );
    });

    it('the processor catches up: every event applied exactly once', async () => {
      await waitFor(
        'the processor to catch up',
        async () => (await count(`SELECT count(*) FROM ${q}.applied`)) === EVENTS,
      );
      assert.equal(await count(`SELECT count(*) FROM ${q}.applied WHERE n <> 1`), 0);
    });

    it('the schedule defers its ticks and they run', async () => {
      await waitFor(
        'a tick to run',
        async () => (await count(`SELECT count(*) FROM ${q}.runs WHERE task = 'tick'`)) >= 1,
      );
      assert.equal(
        await count(`SELECT count(*) - count(DISTINCT (schedule, tick)) AS count FROM ${q}.schedule_ticks`),
        0,
      );
    });

    it('a replay from the start applies every event once more, and only once', async () => {
      await waitFor(
        'the processor to catch up',
        async () => (await count(`SELECT count(*) FROM ${q}.applied`)) === EVENTS,
      );
      await app.processors.replay('counter', { from: 'start' });
      await waitFor(
        'the replay to finish',
        async () => (await count(`SELECT count(*) FROM ${q}.applied WHERE n = 2`)) === EVENTS,
      );
      assert.equal(await count(`SELECT count(*) FROM ${q}.applied WHERE n <> 2`), 0);
    });

    it('warns once that wake-ups come from polling, and nothing about LISTEN failing', () => {
      const warnings = captured.lines.filter((line) => line.includes(NO_LISTEN_WARNING));
      assert.equal(warnings.length, 1);
      assert.equal(captured.lines.filter((line) => /LISTEN.*failed/.test(line)).length, 0);
    });
  });

  describe('with a direct listenUrl', () => {
    const schema = uniqueSchema('pgb_listen');
    const q = `"${schema}"`;
    const captured = captureLog('warn');
    const controller = new AbortController();
    let running: Promise<void>;
    let worker: App;

    before(async () => {
      worker = bouncedApp(schema, { listenUrl: databaseUrl(), logger: captured.log });
      await worker.migrate();
      await direct.query(`CREATE TABLE ${q}.pings (n int NOT NULL)`);
      worker.task('ping', { transaction: true }, async (args: { n: number }, ctx) => {
        await ctx.tx!.query(`INSERT INTO ${q}.pings VALUES ($1)`, [args.n]);
      });
      // Polling an hour apart: only a NOTIFY wakes this worker for a job deferred elsewhere.
      running = worker.run({ concurrency: 2, pollInterval: { hours: 1 }, signal: controller.signal });
    });

    after(async () => {
      controller.abort();
      await running;
    });

    it('a job deferred by another app wakes the worker through LISTEN on the direct connection', async () => {
      await waitFor('the worker to LISTEN', async () => {
        const { rows } = await direct.query(
          `SELECT count(*) FROM pg_stat_activity
           WHERE application_name = 'outbatch-listen' AND query LIKE $1`,
          // The worker listens to its jobs channel, then its cancel channel: the connection's
          // last statement is the second.
          [`LISTEN "${schema}\\_%"`],
        );
        return Number(rows[0].count) > 0;
      });
      // Another app (its own process, as far as the worker knows), through PgBouncer.
      const producer = bouncedApp(schema);
      for (let n = 1; n <= 3; n++) {
        await producer.defer('ping', { n });
        await waitFor(`ping ${n} to run`, async () => (await count(`SELECT count(*) FROM ${q}.pings`)) === n);
      }
      assert.equal(captured.lines.filter((line) => line.includes(NO_LISTEN_WARNING)).length, 0);
    });
  });
});
