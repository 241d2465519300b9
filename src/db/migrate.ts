/**
 * Brings one schema up to date, under an advisory lock (so any number of processes may
 * migrate at once). A fresh schema (no migrations table) gets `schema/current/schema.sql`,
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
  const q = quoteSchema(schema);
  try {
    // First, in words: on 12 or older the schema would fail on "type xid8 does not exist".
    await assertSupportedServer(client);
    // Session lock: held across all files so a second migrator waits, then finds nothing to do.
    await client.query('SELECT pg_advisory_lock(hashtext($1))', [lockKey(schema)]);
    try {
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${q}`);
      let snapshot: Migration | undefined;
      let recorded: Migration[] = [];
      if (!(await hasMigrationsTable(client, schema))) {
        const installed = await installSnapshot(client, schema, migrations);
        snapshot = installed.matches;
        recorded = installed.recorded;
        log.info(
          { snapshot: `${snapshot.version}_${snapshot.name}`, recorded: recorded.length },
          'fresh schema: current schema installed',
        );
        for (const migration of recorded) onApplied?.(migration);
      }
      // An existing schema, or one whose snapshot is behind the newest file.
      const { pending } = compare(schema, await appliedRows(client, schema), migrations);
      for (const migration of pending) {
        await applyMigration(client, schema, migration);
        log.info({ migration: `${migration.version}_${migration.name}` }, 'migration applied');
        onApplied?.(migration);
      }
      return { applied: [...recorded, ...pending], ...(snapshot && { snapshot }) };
    } finally {
      await client.query('SELECT pg_advisory_unlock(hashtext($1))', [lockKey(schema)]);
    }
  } finally {
    client.release();
  }
}

/**
 * A fresh schema: the migrations table, the whole current schema, and a row (with its
 * checksum) for every migration up to the one the snapshot matches, all or nothing; a
 * failure leaves no migrations table, so the next run starts fresh again.
 */
async function installSnapshot(
  client: pg.ClientBase,
  schema: string,
  migrations: Migration[],
): Promise<{ matches: Migration; recorded: Migration[] }> {
  const { sql, matches } = await loadSnapshot(migrations);
  const recorded = migrations.filter((m) => m.version <= matches.version);
  await client.query('BEGIN');
  try {
    // Like the migration files, the snapshot names no schema (see applyMigration).
    await client.query(`SET LOCAL search_path TO ${quoteSchema(schema)}`);
    await client.query(MIGRATIONS_TABLE);
    await client.query(sql);
    await client.query(
      `INSERT INTO ${quoteSchema(schema)}.migrations (version, name, checksum)
       SELECT * FROM unnest($1::integer[], $2::text[], $3::text[])`,
      [recorded.map((m) => m.version), recorded.map((m) => m.name), recorded.map((m) => m.checksum)],
    );
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK');
    throw new MigrationError(
      `installing the current schema (schema/current/schema.sql) into fresh schema "${schema}" failed: ${(error as Error).message}`,
      { cause: error },
    );
  }
  return { matches, recorded };
}

async function applyMigration(client: pg.ClientBase, schema: string, migration: Migration): Promise<void> {
  const q = quoteSchema(schema);
  await client.query('BEGIN');
  try {
    // The files name no schema: they run with this search_path, and their
    // functions capture it (SET search_path FROM CURRENT).
    await client.query(`SET LOCAL search_path TO ${q}`);
    await client.query(migration.sql);
    await client.query(`INSERT INTO ${q}.migrations (version, name, checksum) VALUES ($1, $2, $3)`, [
      migration.version,
      migration.name,
      migration.checksum,
    ]);
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK');
    throw new MigrationError(
      `migration ${migration.version}_${migration.name} failed on schema "${schema}": ${(error as Error).message}`,
      { cause: error },
    );
  }
}
