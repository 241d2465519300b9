/**
 * Brings one schema up to date, one transaction per step, each under a transaction-scoped
 * advisory lock (so any number of processes may migrate at once, through PgBouncer too).
 * A fresh schema (no migrations table) gets `schema/current/schema.sql`,
 * the whole current schema, in one transaction, with every migration it covers recorded
 * as applied; an existing one gets the numbered files of `schema/` it lacks, one
 * transaction per file. Each is recorded with a checksum: shipped files are append-only,
 * and an edited one is refused. test/db/schemaSnapshot.test.ts proves both roads
 * end in the same schema.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import type { Logger } from 'pino';
import { MigrationError } from '../errors.js';
import { PACKAGE_ROOT } from '../packageRoot.js';
import { quoteSchema, validateSchemaName } from './identifiers.js';
import { assertSupportedServer } from './serverVersion.js';

export interface Migration {
  version: number;
  name: string;
  sql: string;
  checksum: string;
}

/** `snapshot`: the migration the current-schema file was installed as, on a fresh schema. */
export interface MigrateResult {
  applied: Migration[];
  snapshot?: Migration;
}

export interface MigrationStatus {
  applied: { version: number; name: string; appliedAt: Date }[];
  pending: Migration[];
}

const SCHEMA_DIR = path.join(PACKAGE_ROOT, 'schema');
const FILE_NAME = /^(\d{3,})_([a-z0-9_]+)\.sql$/;
const SNAPSHOT_FILE = path.join(SCHEMA_DIR, 'current', 'schema.sql');
// The snapshot's header names the last migration it includes, so a fresh install records
// exactly those and still applies any later file the snapshot has not caught up with.
const SNAPSHOT_MATCHES = /^-- Matches migration: (\d{3,})_([a-z0-9_]+)$/m;

// The migrator's own bookkeeping: created here on both roads, not by any schema file.
const MIGRATIONS_TABLE = `CREATE TABLE migrations (
  version integer PRIMARY KEY,
  name text NOT NULL,
  checksum text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)`;

/** The numbered files directly in `schema/`; `current/` (the snapshot) and README.md are not migrations. */
export async function loadMigrations(dir = SCHEMA_DIR): Promise<Migration[]> {
  const files = (await fs.readdir(dir)).filter((file) => file.endsWith('.sql')).sort();
  const migrations: Migration[] = [];
  for (const file of files) {
    const match = FILE_NAME.exec(file);
    if (!match) throw new MigrationError(`migration file ${file} is misnamed: expected NNN_name.sql`);
    // Line endings are normalised so a Windows checkout keeps the same checksum.
    const sql = (await fs.readFile(path.join(dir, file), 'utf8')).replace(/\r\n/g, '\n');
    const version = Number(match[1]);
    if (migrations.some((m) => m.version === version)) {
      throw new MigrationError(`two migration files share number ${match[1]}: renumber one`);
    }
    migrations.push({
      version,
      name: match[2]!,
      sql,
      checksum: createHash('sha256').update(sql).digest('hex'),
    });
  }
  return migrations;
}

/** The current-schema file and the migration it matches (the last one it includes). */
export async function loadSnapshot(
  migrations: Migration[],
  file = SNAPSHOT_FILE,
): Promise<{ sql: string; matches: Migration }> {
  const sql = (await fs.readFile(file, 'utf8')).replace(/\r\n/g, '\n');
  const match = SNAPSHOT_MATCHES.exec(sql);
  const matches = match && migrations.find((m) => m.version === Number(match[1]) && m.name === match[2]);
  if (!matches) {
    throw new MigrationError(
      `${file} must name the last migration it includes, in a line "-- Matches migration: NNN_name"${match ? `; it names ${match[1]}_${match[2]}, which is not in schema/` : ''}`,
    );
  }
  return { sql, matches };
}

function lockKey(schema: string): string {
  return `outbatch.migrate:${schema}`;
}

async function hasMigrationsTable(client: pg.ClientBase, schema: string): Promise<boolean> {
  const exists = await client.query<{ exists: boolean }>(`SELECT to_regclass($1) IS NOT NULL AS exists`, [
    `${quoteSchema(schema)}.migrations`,
  ]);
  return exists.rows[0]?.exists === true;
}

async function appliedRows(client: pg.ClientBase, schema: string) {
  if (!(await hasMigrationsTable(client, schema))) return [];
  const result = await client.query<{ version: number; name: string; checksum: string; applied_at: Date }>(
    `SELECT version, name, checksum, applied_at FROM ${quoteSchema(schema)}.migrations ORDER BY version`,
  );
  return result.rows;
}

/** Compares the database with the code; throws when the database is newer or a file was edited. */
function compare(
  schema: string,
  applied: Awaited<ReturnType<typeof appliedRows>>,
  migrations: Migration[],
): MigrationStatus {
  const byVersion = new Map(migrations.map((m) => [m.version, m]));
  for (const row of applied) {
    const known = byVersion.get(row.version);
    if (!known) {
      throw new MigrationError(
        `schema "${schema}" has migration ${row.version} (${row.name}) that this code does not know: the database is newer than this outbatch; upgrade outbatch (or point it at another schema)`,
      );
    }
    if (known.checksum !== row.checksum) {
      throw new MigrationError(
        `migration ${row.version} (${row.name}) was changed after it was applied to schema "${schema}": shipped migrations are append-only; restore the original file and put the change in a new numbered migration`,
      );
    }
  }
  const done = new Set(applied.map((row) => row.version));
  return {
    applied: applied.map((row) => ({ version: row.version, name: row.name, appliedAt: row.applied_at })),
    pending: migrations.filter((m) => !done.has(m.version)),
  };
}

export async function migrationStatus(pool: pg.Pool, schema: string): Promise<MigrationStatus> {
  validateSchemaName(schema);
  const client = await pool.connect();
  try {
    return compare(schema, await appliedRows(client, schema), await loadMigrations());
  } finally {
    client.release();
  }
}

/** Throws unless every migration is applied; workers call this before they start. */
export async function assertMigrated(pool: pg.Pool, schema: string): Promise<void> {
  const status = await migrationStatus(pool, schema);
  if (status.pending.length > 0) {
    const names = status.pending.map((m) => `${m.version}_${m.name}`).join(', ');
    throw new MigrationError(
      `schema "${schema}" has ${status.pending.length} pending migration(s) (${names}): run "outbatch migrate" first`,
    );
  }
}

export async function migrate(
  pool: pg.Pool,
  schema: string,
  log: Logger,
  onApplied?: (migration: Migration) => void,
): Promise<MigrateResult> {
  validateSchemaName(schema);
  const migrations = await loadMigrations();
  const client = await pool.connect();
  try {
    // First, in words: on 12 or older the schema would fail on "type xid8 does not exist".
    await assertSupportedServer(client);
    let snapshot: Migration | undefined;
    const applied: Migration[] = [];
    for (;;) {
      const step = await migrateOneStep(client, schema, migrations);
      if (step.kind === 'done') break;
      if (step.kind === 'snapshot') {
        snapshot = step.matches;
        log.info(
          { snapshot: `${snapshot.version}_${snapshot.name}`, recorded: step.recorded.length },
          'fresh schema: current schema installed',
        );
        for (const migration of step.recorded) onApplied?.(migration);
        applied.push(...step.recorded);
      } else {
        log.info({ migration: `${step.migration.version}_${step.migration.name}` }, 'migration applied');
        onApplied?.(step.migration);
        applied.push(step.migration);
      }
    }
    return { applied, ...(snapshot && { snapshot }) };
  } finally {
    client.release();
  }
}

/**
 * A migration may rebuild an index on a large table: the statement_timeout a managed
 * service puts on every role must not cut it off half-way (the transaction would roll back
 * on every deploy). Only for the step's own transaction.
 */
const NO_STATEMENT_TIMEOUT = 'SET LOCAL statement_timeout = 0';

type Step =
  | { kind: 'snapshot'; matches: Migration; recorded: Migration[] }
  | { kind: 'migration'; migration: Migration }
  | { kind: 'done' };

/**
 * One transaction: take the schema's migration lock, look at what is applied, and do the
 * next thing — install the current schema on a fresh one, or apply the next pending file.
 * The lock is transaction-scoped (`pg_advisory_xact_lock`), not held by the session across
 * all files: behind a transaction pooler (PgBouncer) a session lock would stay on whichever
 * server connection took it, and the unlock could run on another. Concurrent migrators
 * still never apply a file twice: each step reads the state after the lock is granted
 * (read committed: a new snapshot per statement), so a migrator that waited finds the
 * other's work done and moves on to what is left, or to nothing. A COMMIT whose reply is
 * lost fails this run; the next one reads what is recorded and never redoes a committed
 * step. A refused step rolls back whole (lock included) and leaves the earlier ones applied.
 */
async function migrateOneStep(client: pg.ClientBase, schema: string, migrations: Migration[]): Promise<Step> {
  const q = quoteSchema(schema);
  await client.query('BEGIN');
  let step: Step;
  try {
    // Before the lock: waiting for another migrator is part of the migration too.
    await client.query(NO_STATEMENT_TIMEOUT);
    // A role's lock_timeout (a managed service's default) applies to advisory locks too: a
    // second deploy's migrator would fail after it while the first applies a long step.
    // The wait blocks no one else, so it goes unbounded; the role's value is put back for
    // the step's own DDL, whose lock waits do queue other sessions behind them.
    const { rows } = await client.query<{ lock_timeout: string }>(
      `SELECT current_setting('lock_timeout') AS lock_timeout, set_config('lock_timeout', '0', true)`,
    );
    await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [lockKey(schema)]);
    await client.query(`SELECT set_config('lock_timeout', $1, true)`, [rows[0]!.lock_timeout]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${q}`);
    // The files and the snapshot name no schema: they run with this search_path, and
    // their functions capture it (SET search_path FROM CURRENT).
    await client.query(`SET LOCAL search_path TO ${q}`);
    if (!(await hasMigrationsTable(client, schema))) {
      step = { kind: 'snapshot', ...(await installSnapshot(client, schema, migrations)) };
    } else {
      const next = compare(schema, await appliedRows(client, schema), migrations).pending[0];
      if (next) await applyMigration(client, schema, next);
      step = next ? { kind: 'migration', migration: next } : { kind: 'done' };
    }
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {});
    throw error;
  }
  return step;
}

/**
 * A fresh schema: the migrations table, the whole current schema, and a row (with its
 * checksum) for every migration up to the one the snapshot matches, in the step's
 * transaction; a failure leaves no migrations table, so the next run starts fresh again.
 */
async function installSnapshot(
  client: pg.ClientBase,
  schema: string,
  migrations: Migration[],
): Promise<{ matches: Migration; recorded: Migration[] }> {
  const { sql, matches } = await loadSnapshot(migrations);
  const recorded = migrations.filter((m) => m.version <= matches.version);
  try {
    await client.query(MIGRATIONS_TABLE);
    await client.query(sql);
    await client.query(
      `INSERT INTO ${quoteSchema(schema)}.migrations (version, name, checksum)
       SELECT * FROM unnest($1::integer[], $2::text[], $3::text[])`,
      [recorded.map((m) => m.version), recorded.map((m) => m.name), recorded.map((m) => m.checksum)],
    );
  } catch (error) {
    throw new MigrationError(
      `installing the current schema (schema/current/schema.sql) into fresh schema "${schema}" failed: ${(error as Error).message}`,
      { cause: error },
    );
  }
  return { matches, recorded };
}

/** One numbered file and its row, in the step's transaction. */
async function applyMigration(client: pg.ClientBase, schema: string, migration: Migration): Promise<void> {
  const q = quoteSchema(schema);
  try {
    await client.query(migration.sql);
    await client.query(`INSERT INTO ${q}.migrations (version, name, checksum) VALUES ($1, $2, $3)`, [
      migration.version,
      migration.name,
      migration.checksum,
    ]);
  } catch (error) {
    throw new MigrationError(
      `migration ${migration.version}_${migration.name} failed on schema "${schema}": ${(error as Error).message}`,
      { cause: error },
    );
  }
}
