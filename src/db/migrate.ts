/**
 * Applies the numbered SQL files in `schema/` to one schema: under an advisory lock
 * (so any number of processes may migrate at once), one transaction per file,
 * recorded with a checksum. Shipped files are append-only; an edited one is refused.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import type { Logger } from 'pino';
import { MigrationError } from '../errors.js';
import { quoteSchema, validateSchemaName } from './identifiers.js';

export interface Migration {
  version: number;
  name: string;
  sql: string;
  checksum: string;
}

export interface MigrationStatus {
  applied: { version: number; name: string; appliedAt: Date }[];
  pending: Migration[];
}

const SCHEMA_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'schema');
const FILE_NAME = /^(\d{3,})_([a-z0-9_]+)\.sql$/;

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

function lockKey(schema: string): string {
  return `outbatch.migrate:${schema}`;
}

async function appliedRows(client: pg.ClientBase, schema: string) {
  const exists = await client.query<{ exists: boolean }>(`SELECT to_regclass($1) IS NOT NULL AS exists`, [
    `${quoteSchema(schema)}.migrations`,
  ]);
  if (!exists.rows[0]?.exists) return [];
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
): Promise<{ applied: Migration[] }> {
  validateSchemaName(schema);
  const migrations = await loadMigrations();
  const client = await pool.connect();
  const q = quoteSchema(schema);
  try {
    // Session lock: held across all files so a second migrator waits, then finds nothing to do.
    await client.query('SELECT pg_advisory_lock(hashtext($1))', [lockKey(schema)]);
    try {
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${q}`);
      await client.query(`CREATE TABLE IF NOT EXISTS ${q}.migrations (
        version integer PRIMARY KEY,
        name text NOT NULL,
        checksum text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
      )`);
      const { pending } = compare(schema, await appliedRows(client, schema), migrations);
      for (const migration of pending) {
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
        log.info({ migration: `${migration.version}_${migration.name}` }, 'migration applied');
        onApplied?.(migration);
      }
      return { applied: pending };
    } finally {
      await client.query('SELECT pg_advisory_unlock(hashtext($1))', [lockKey(schema)]);
    }
  } finally {
    client.release();
  }
}
