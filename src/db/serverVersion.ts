/**
 * The oldest PostgreSQL outbatch runs on. 13 brought what the event log is built on:
 * the `xid8` type, `pg_current_xact_id()` and `pg_snapshot_xmin(pg_current_snapshot())`
 * (the gap-safe read horizon). `migrate` refuses an older server before it writes
 * anything, and `doctor` reports it, both with the same line.
 */
import { UnsupportedServerError } from '../errors.js';
import type { Queryable } from './queryable.js';

export const MIN_SERVER_MAJOR = 13;

export interface ServerVersion {
  /** `server_version`, as the server prints it ("13.23", "18.4 (Debian 18.4-1)"). */
  version: string;
  /** `server_version_num`: 130023 for 13.23. */
  num: number;
}

export async function readServerVersion(db: Queryable): Promise<ServerVersion> {
  const { rows } = await db.query<{ version: string; num: string }>(
    `SELECT current_setting('server_version') AS version, current_setting('server_version_num') AS num`,
  );
  return { version: rows[0]!.version, num: Number(rows[0]!.num) };
}

/** One line when the server is too old for outbatch, else undefined. */
export function serverVersionProblem(found: ServerVersion): string | undefined {
  if (found.num >= MIN_SERVER_MAJOR * 10_000) return undefined;
  return `PostgreSQL ${found.version} is too old: outbatch needs PostgreSQL ${MIN_SERVER_MAJOR} or newer (for xid8 and pg_current_xact_id()); upgrade the server or point DATABASE_URL at a newer one`;
}

/** Throws UnsupportedServerError on a server older than MIN_SERVER_MAJOR; returns the version. */
export async function assertSupportedServer(db: Queryable): Promise<ServerVersion> {
  const found = await readServerVersion(db);
  const problem = serverVersionProblem(found);
  if (problem) throw new UnsupportedServerError(problem, found.version);
  return found;
}
