/**
 * The upgrade path between PostgreSQL majors: a schema created and used on the oldest
 * supported major (events, a processor's checkpoint, finished and waiting jobs) is moved
 * by pg_dump/pg_restore into the server at DATABASE_URL (the newest, in CI). The moved
 * schema's tx ids are ahead of the new cluster's, as after any logical move into a younger
 * cluster: doctor says so, `events rebase-tx-ids` fixes it, and then the processor
 * applies each new event exactly once and the waiting jobs run once.
 *
 * Needs a second server: OUTBATCH_TEST_UPGRADE_FROM_URL, which `ops/matrix/run --upgrade 13`
 * starts; skipped without it. pg_upgrade is not used: the registry's binaries ship no
 * pg_upgrade (nor pg_dump, which comes from the machine).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import pg from 'pg';
import { readServerVersion } from '../../src/db/serverVersion.js';
import { type App, createApp, createLogger } from '../../src/index.js';
import { appliedTable, countApplied, databaseUrl, runCli, uniqueSchema } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

const run = promisify(execFile);
const silent = createLogger({ level: 'silent' });
const fromUrl = process.env.OUTBATCH_TEST_UPGRADE_FROM_URL;

/** The same processor and task on both sides of the move, as the same code would define them. */
function define(app: App, q: string) {
  app.processor(
    'count',
    { batchSize: 100, trigger: { onAppend: { debounce: { milliseconds: 10 } } } },
    (events$, ctx) => events$.pipe(countApplied(ctx.tx, q)),
  );
  return app.task('note', { transaction: true }, async (args: { n: number }, ctx) => {
    await ctx.tx!.query(
      `INSERT INTO ${q}.noted AS d VALUES ($1, 1) ON CONFLICT (n) DO UPDATE SET n_runs = d.n_runs + 1`,
      [args.n],
    );
  });
}

/** Why this machine cannot move a schema from the source server, or undefined when it can. */
async function cannotMove(source: pg.Pool): Promise<string | undefined> {
  let version: string;
  try {
    version = (await run('pg_dump', ['--version'])).stdout;
    await run('pg_restore', ['--version']);
  } catch {
    return 'no pg_dump/pg_restore on PATH';
  }
  const client = Number(/(\d+)(?:\.\d+)?/.exec(version)?.[1]);
  const server = Math.floor((await readServerVersion(source)).num / 10_000);
  return server > client ? `pg_dump ${client} cannot dump the PostgreSQL ${server} source` : undefined;
}

async function nextXid(pool: pg.Pool): Promise<bigint> {
  const { rows } = await pool.query('SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS x');
  return BigInt(rows[0].x);
}

describe('moving a schema from an older PostgreSQL major to a newer one', () => {
  const schema = uniqueSchema('upgrade');
  const q = `"${schema}"`;
  const apps: App[] = [];
  const pools: pg.Pool[] = [];
  let dir: string | undefined;
  after(async () => {
    for (const app of apps) await app.close();
    for (const pool of pools) {
      await pool.query(`DROP SCHEMA IF EXISTS ${q} CASCADE`).catch(() => {});
      await pool.end();
    }
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('keeps working after pg_dump/pg_restore and rebase-tx-ids: new events once, waiting jobs once, doctor clean', async (t) => {
    if (!fromUrl) {
      t.skip('OUTBATCH_TEST_UPGRADE_FROM_URL is unset: run ops/matrix/run --upgrade 13');
      return;
    }
    const sourcePool = new pg.Pool({ connectionString: fromUrl, max: 2 });
    const targetPool = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
    pools.push(sourcePool, targetPool);
    const reason = await cannotMove(sourcePool);
    if (reason) {
      t.skip(reason);
      return;
    }
    const [from, to] = [await readServerVersion(sourcePool), await readServerVersion(targetPool)];
    t.diagnostic(`PostgreSQL ${from.version} -> ${to.version}`);

    // On the old major: 20 events through the processor, 5 jobs done, 3 left waiting.
    const source = createApp({ databaseUrl: fromUrl, schema, logger: silent });
    apps.push(source);
    await source.migrate();
    await sourcePool.query(appliedTable(q));
    await sourcePool.query(`CREATE TABLE ${q}.noted (n int PRIMARY KEY, n_runs int NOT NULL)`);
    const note = define(source, q);
    // The old cluster has lived longer than the new one: the ids it stores are ahead of the
    // new cluster's, as after a real move.
    const gap = (await nextXid(targetPool)) + 10_000n - (await nextXid(sourcePool));
    if (gap > 0n) await sourcePool.query(`CALL ${q}.consume_tx_ids($1)`, [gap.toString()]);
    const stop = new AbortController();
    const worker = source.run({ concurrency: 2, signal: stop.signal, pollInterval: 50 });
    try {
      await source.events.append(
        Array.from({ length: 20 }, (_, i) => ({ stream: `s-${i % 4}`, type: 'T', data: { i } })),
      );
      for (let n = 1; n <= 5; n++) await note.defer({ n });
      await waitFor('the processor and the jobs on the old major', async () => {
        const [count] = await source.processors.status('count');
        const { rows } = await sourcePool.query(`SELECT count(*)::int AS c FROM ${q}.noted`);
        return count?.lagEvents === 0 && count.checkpoint !== '0:0' && rows[0].c === 5;
      });
    } finally {
      stop.abort();
      await worker;
    }
    for (let n = 6; n <= 8; n++) await note.defer({ n });

    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'outbatch-upgrade-'));
    const dump = path.join(dir, 'schema.dump');
    await run('pg_dump', ['--schema', schema, '--format', 'custom', '--file', dump, fromUrl]);
    await run('pg_restore', ['--no-owner', '--exit-on-error', '--dbname', databaseUrl(), dump]);

    const env = { DATABASE_URL: databaseUrl(), OUTBATCH_SCHEMA: schema };
    const refused = await runCli(['doctor'], env);
    assert.equal(refused.code, 1, refused.stdout + refused.stderr);
    assert.match(refused.stdout, /FAIL {2}tx id horizon {3}schema ".*" stores transaction ids up to \d+/);
    const migrated = await runCli(['migrate'], env);
    assert.equal(migrated.code, 0, migrated.stderr);
    assert.match(migrated.stdout, /is up to date; nothing to apply/);
    const rebase = await runCli(['events', 'rebase-tx-ids', '--yes'], env);
    assert.equal(rebase.code, 0, rebase.stderr);
    assert.match(
      rebase.stdout,
      /^rebased \d+ transaction id\(s\) on 20 event\(s\), 1 processor checkpoint\(s\)/,
    );
    const doctor = await runCli(['doctor'], env);
    assert.equal(doctor.code, 0, doctor.stdout + doctor.stderr);
    assert.match(doctor.stdout, new RegExp(`server version  PostgreSQL ${to.version.split(' ')[0]}`));

    // On the new major: 10 more events and the 3 waiting jobs, each once.
    const target = createApp({ databaseUrl: databaseUrl(), schema, logger: silent });
    apps.push(target);
    define(target, q);
    assert.equal((await target.processors.status('count'))[0]!.lagEvents, 0);
    await target.events.append(
      Array.from({ length: 10 }, (_, i) => ({ stream: `s-${i % 4}`, type: 'T', data: { i: 20 + i } })),
    );
    const again = new AbortController();
    const worker2 = target.run({ concurrency: 2, signal: again.signal, pollInterval: 50 });
    try {
      await waitFor('the processor and the waiting jobs on the new major', async () => {
        const [count] = await target.processors.status('count');
        const { rows } = await targetPool.query(`SELECT count(*)::int AS c FROM ${q}.noted`);
        return count?.lagEvents === 0 && rows[0].c === 8;
      });
    } finally {
      again.abort();
      await worker2;
    }
    const applied = await targetPool.query(
      `SELECT count(*)::int AS events, max(n) AS most,
              (SELECT count(*)::int FROM ${q}.events) AS stored FROM ${q}.applied`,
    );
    assert.deepEqual(applied.rows, [{ events: 30, most: 1, stored: 30 }]);
    const noted = await targetPool.query(`SELECT n, n_runs FROM ${q}.noted ORDER BY n`);
    assert.deepEqual(
      noted.rows,
      Array.from({ length: 8 }, (_, i) => ({ n: i + 1, n_runs: 1 })),
    );
    const jobs = await targetPool.query(`SELECT status, count(*)::int AS c FROM ${q}.jobs GROUP BY 1`);
    assert.deepEqual(jobs.rows, []);
  });
});
