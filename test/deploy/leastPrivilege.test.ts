/**
 * Managed PostgreSQL: no superuser. A migration owner that cannot create databases or
 * roles migrates and runs ops/sql/roles.sql; services, workers and the dashboard log in
 * as roles that own nothing, each with the settings managed services force
 * (statement_timeout, idle_in_transaction_session_timeout, lock_timeout) on the role.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { bulkWrite, createApp, createLogger, type StoredEvent } from '../../src/index.js';
import { databaseUrl, ROOT, uniqueSchema } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

const admin = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
const prefix = `t_lp_${randomBytes(3).toString('hex')}`;
const schema = uniqueSchema('least_privilege');
const projection = `${schema}_projection`;
const password = randomBytes(12).toString('hex');
const silent = createLogger({ level: 'silent' });
const GROUPS = ['appender', 'worker', 'dashboard'].map((name) => `${prefix}_${name}`);
const LOGINS = {
  owner: `${prefix}_owner`,
  service: `${prefix}_svc`,
  worker: `${prefix}_wrk`,
  dashboard: `${prefix}_dash`,
};
const apps: ReturnType<typeof createApp>[] = [];

/** The server's URL with another user and this test's password. */
function urlFor(user: string): string {
  const url = new URL(databaseUrl());
  url.username = user;
  url.password = password;
  return url.toString();
}

function appAs(user: string) {
  const app = createApp({ databaseUrl: urlFor(user), schema, logger: silent });
  apps.push(app);
  return app;
}

/** roles.sql as `user`, with search_path on the schema; returns its NOTICEs. */
async function runRolesSql(user: string): Promise<string[]> {
  const sql = await fs.readFile(path.join(ROOT, 'ops', 'sql', 'roles.sql'), 'utf8');
  const client = new pg.Client({ connectionString: urlFor(user) });
  const notices: string[] = [];
  client.on('notice', (notice) => notices.push(notice.message ?? ''));
  await client.connect();
  try {
    await client.query(`SET search_path TO "${schema}"; SET outbatch.role_prefix = '${prefix}'`);
    await client.query(sql);
    return notices;
  } finally {
    await client.end();
  }
}

before(async () => {
  const { rows } = await admin.query<{ db: string }>('SELECT current_database() AS db');
  const db = rows[0]!.db;
  // What an administrator does once; the forced settings stand in for a managed service's.
  await admin.query(
    `CREATE ROLE ${LOGINS.owner} LOGIN PASSWORD '${password}' NOSUPERUSER NOCREATEDB NOCREATEROLE`,
  );
  await admin.query(`GRANT CREATE ON DATABASE "${db}" TO ${LOGINS.owner}`);
  for (const login of [LOGINS.service, LOGINS.worker, LOGINS.dashboard]) {
    await admin.query(
      `CREATE ROLE ${login} LOGIN PASSWORD '${password}' NOSUPERUSER NOCREATEDB NOCREATEROLE`,
    );
  }
  for (const login of Object.values(LOGINS)) {
    await admin.query(`ALTER ROLE ${login} SET statement_timeout = '5s'`);
    await admin.query(`ALTER ROLE ${login} SET idle_in_transaction_session_timeout = '5s'`);
    await admin.query(`ALTER ROLE ${login} SET lock_timeout = '2s'`);
  }
});

after(async () => {
  for (const app of apps) await app.close().catch(() => {});
  await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await admin.query(`DROP SCHEMA IF EXISTS "${projection}" CASCADE`);
  for (const role of [...Object.values(LOGINS), ...GROUPS]) {
    const exists = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
    if (exists.rowCount === 0) continue;
    await admin.query(`DROP OWNED BY ${role} CASCADE`);
    await admin.query(`DROP ROLE ${role}`);
  }
  await admin.end();
});

describe('least privilege on managed PostgreSQL', () => {
  it('the owner, no superuser and no CREATEDB, migrates and sets up the roles', async () => {
    const owner = appAs(LOGINS.owner);
    await owner.migrate();
    const { rows } = await admin.query(
      `SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, n.nspowner::regrole::text AS schema_owner
       FROM pg_roles r, pg_namespace n WHERE r.rolname = $1 AND n.nspname = $2`,
      [LOGINS.owner, schema],
    );
    assert.deepEqual(rows[0], {
      rolsuper: false,
      rolcreatedb: false,
      rolcreaterole: false,
      schema_owner: LOGINS.owner,
    });

    // No CREATEROLE: the file names the group roles it needs and changes nothing.
    await assert.rejects(runRolesSql(LOGINS.owner), (error: Error) => {
      assert.match(error.message, /cannot create roles \(no CREATEROLE\)/);
      for (const group of GROUPS) assert.ok(error.message.includes(group), `names ${group}`);
      return true;
    });
    const none = await admin.query('SELECT count(*)::int AS n FROM pg_roles WHERE rolname = ANY($1)', [
      GROUPS,
    ]);
    assert.equal(none.rows[0].n, 0);

    // The administrator creates them; the owner's rerun grants, and says it may not grant
    // pg_read_all_stats.
    for (const group of GROUPS) await admin.query(`CREATE ROLE ${group} NOLOGIN`);
    const notices = await runRolesSql(LOGINS.owner);
    assert.ok(
      notices.some((notice) => notice.includes('may not grant pg_read_all_stats')),
      `a NOTICE about pg_read_all_stats: ${JSON.stringify(notices)}`,
    );
    await admin.query(`GRANT ${prefix}_appender TO ${LOGINS.service}`);
    await admin.query(`GRANT ${prefix}_worker TO ${LOGINS.worker}`);
    await admin.query(`GRANT ${prefix}_dashboard TO ${LOGINS.dashboard}`);

    // The processor's projection: the owner's table, granted to the worker role.
    const ownerClient = new pg.Client({ connectionString: urlFor(LOGINS.owner) });
    await ownerClient.connect();
    try {
      await ownerClient.query(`CREATE SCHEMA "${projection}"`);
      await ownerClient.query(`CREATE TABLE "${projection}".seen (position bigint PRIMARY KEY)`);
      await ownerClient.query(`CREATE TABLE "${projection}".done (id text PRIMARY KEY)`);
      await ownerClient.query(`GRANT USAGE ON SCHEMA "${projection}" TO ${prefix}_worker`);
      await ownerClient.query(
        `GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA "${projection}" TO ${prefix}_worker`,
      );
    } finally {
      await ownerClient.end();
    }
  });

  it('services append and defer, a worker runs jobs and a processor, the dashboard reads: each as its own login', async () => {
    const events = 300;
    const jobs = 60;
    const service = appAs(LOGINS.service);
    service.task('record', {}, async () => {});
    service.task('record-tx', { transaction: true }, async () => {});
    for (let i = 0; i < events; i += 50) {
      await service.events.append(
        Array.from({ length: 50 }, (_, k) => ({
          stream: `order-${i + k}`,
          type: 'OrderPlaced',
          data: { i: i + k },
        })),
      );
    }
    for (let i = 0; i < jobs; i += 1) {
      await service.defer(i % 2 === 0 ? 'record' : 'record-tx', { id: `job-${i}` });
    }
    // The appender role may not run jobs.
    const deny = new pg.Client({ connectionString: urlFor(LOGINS.service) });
    await deny.connect();
    try {
      await assert.rejects(deny.query(`UPDATE "${schema}".jobs SET status = 'doing'`), { code: '42501' });
    } finally {
      await deny.end();
    }

    const worker = appAs(LOGINS.worker);
    let failedOnce = false;
    worker.task(
      'record',
      { retry: { attempts: 3, backoff: { initial: 10, max: 10 } } },
      async (args: { id: string }) => {
        if (args.id === 'job-0' && !failedOnce) {
          failedOnce = true;
          throw new Error('first attempt fails');
        }
        await admin.query(`INSERT INTO "${projection}".done VALUES ($1) ON CONFLICT DO NOTHING`, [args.id]);
      },
    );
    worker.task('record-tx', { transaction: true }, async (args: { id: string }, ctx) => {
      await ctx.tx!.query(`INSERT INTO "${projection}".done VALUES ($1)`, [args.id]);
    });
    worker.processor('seen', { trigger: { onAppend: { debounce: { milliseconds: 10 } } } }, (events$, ctx) =>
      events$.pipe(
        bulkWrite(
          ctx.tx,
          `INSERT INTO "${projection}".seen SELECT unnest($1::bigint[])`,
          (page: StoredEvent[]) => [page.map((event) => event.position.toString())],
        ),
      ),
    );
    const controller = new AbortController();
    const running = worker.run({ concurrency: 4, signal: controller.signal, pollInterval: 50 });
    try {
      await waitFor('every job done and every event seen', async () => {
        const { rows } = await admin.query(
          `SELECT (SELECT count(*) FROM "${projection}".done)::int AS done,
                  (SELECT count(*) FROM "${projection}".seen)::int AS seen`,
        );
        return rows[0].done === jobs && rows[0].seen === events;
      });
    } finally {
      controller.abort();
      await running;
    }
    const { rows } = await admin.query(
      `SELECT status, count(*)::int AS n FROM "${schema}".jobs WHERE task LIKE 'record%' GROUP BY status`,
    );
    // Succeeded rows are deleted at once (no keepSucceededFor): nothing left but none failed.
    assert.deepEqual(rows, []);

    const dashboard = appAs(LOGINS.dashboard);
    const [status] = await dashboard.processors.status('seen');
    assert.equal(status?.lagEvents, 0);
    const stats = await dashboard.jobs.stats();
    assert.equal(
      stats.filter((row) => row.task.startsWith('record')).reduce((sum, row) => sum + row.succeeded, 0),
      jobs,
    );
    const write = new pg.Client({ connectionString: urlFor(LOGINS.dashboard) });
    await write.connect();
    try {
      await assert.rejects(write.query(`UPDATE "${schema}".processors SET paused = true`), { code: '42501' });
    } finally {
      await write.end();
    }
  });

  it('services use the bulk paths too: an append by COPY and deferMany', async () => {
    const service = appAs(LOGINS.service);
    const bulk = service.task('bulk', {}, async () => {});
    // 1000 events take the COPY path, which reads the position sequence.
    const appended = await service.events.append(
      Array.from({ length: 1000 }, (_, i) => ({ stream: `bulk-${i}`, type: 'Bulk', data: {} })),
    );
    assert.equal(appended.length, 1000);
    // Without queueing locks defer_jobs() draws the ids from the jobs' sequence itself.
    const results = await bulk.deferMany([{ args: { i: 1 } }, { args: { i: 2 } }]);
    assert.deepEqual(
      results.map((result) => result.enqueued),
      [true, true],
    );
  });

  it('a table the owner adds later is readable by worker and dashboard before roles.sql is rerun', async () => {
    const ownerClient = new pg.Client({ connectionString: urlFor(LOGINS.owner) });
    await ownerClient.connect();
    try {
      await ownerClient.query(`CREATE TABLE "${schema}".added_later (x int)`);
    } finally {
      await ownerClient.end();
    }
    for (const login of [LOGINS.worker, LOGINS.dashboard]) {
      const client = new pg.Client({ connectionString: urlFor(login) });
      await client.connect();
      try {
        await client.query(`SELECT * FROM "${schema}".added_later`);
      } finally {
        await client.end();
      }
    }
  });

  it('migrations run past a forced statement_timeout', async () => {
    // 50 ms, not 1: the first statement of a new backend (catalog caches loading) took over
    // 1 ms on this machine once it had run for a few hours, and the app could not even
    // connect; a statement_timeout below a connection's own start-up cost is not a setting
    // anyone runs with. The schema install is still many times over 50 ms.
    await admin.query(`ALTER ROLE ${LOGINS.owner} SET statement_timeout = '50ms'`);
    try {
      // A fresh schema installs the whole current schema in one statement: far over 50 ms.
      const other = uniqueSchema('least_privilege_fresh');
      const owner = createApp({ databaseUrl: urlFor(LOGINS.owner), schema: other, logger: silent });
      try {
        await owner.migrate();
      } finally {
        await owner.close();
        await admin.query(`DROP SCHEMA IF EXISTS "${other}" CASCADE`);
      }
    } finally {
      await admin.query(`ALTER ROLE ${LOGINS.owner} SET statement_timeout = '5s'`);
    }
  });

  it('a migrator waits for another past a forced lock_timeout', async () => {
    await admin.query(`ALTER ROLE ${LOGINS.owner} SET lock_timeout = '100ms'`);
    const other = uniqueSchema('least_privilege_waits');
    const holder = await admin.connect();
    const owner = createApp({ databaseUrl: urlFor(LOGINS.owner), schema: other, logger: silent });
    try {
      // Another deploy's migrator in the middle of a long step: it holds the schema's lock.
      await holder.query('BEGIN');
      await holder.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`outbatch.migrate:${other}`]);
      const migrating = owner.migrate();
      migrating.catch(() => {});
      // Longer than the role's lock_timeout: a wait cut off by it fails the deploy.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      await holder.query('COMMIT');
      const result = await migrating;
      assert.ok(result.applied.length > 0, 'the waiting migrator installs the schema once the lock is free');
    } finally {
      await holder.query('ROLLBACK').catch(() => {});
      holder.release();
      await owner.close();
      await admin.query(`DROP SCHEMA IF EXISTS "${other}" CASCADE`);
      await admin.query(`ALTER ROLE ${LOGINS.owner} SET lock_timeout = '2s'`);
    }
  });
});
