/**
 * `readUrl`: where reads go — a streaming replica of `databaseUrl`, or, without the option,
 * the app's own pool. Opened lazily, checked once: a URL that is no replica of the primary
 * (another cluster, another database) would hand processors events that are not in the
 * primary's log, so it is refused; the primary itself is accepted (reads then cost the
 * primary as before, on a pool of their own) and said once in the log.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { ConnectionError, ValidationError } from '../errors.js';
import {
  checkConnection,
  checkDatabaseUrl,
  connectionFailure,
  createPool,
  describeTarget,
  type PoolOptions,
} from './connection.js';
import type { Database } from './database.js';

export interface Reads {
  pool: pg.Pool;
  /** The URL reads connect to (the dashboard opens its own small pool there); never log it. */
  url: string;
  /**
   * True with `readUrl`: reads have a pool of their own, so a processor reads its pages
   * there, outside the page's transaction on the primary (see processors/replicaReads.ts).
   */
  separate: boolean;
  /** True when that server is in recovery (a standby): status then reports its replay lag. */
  replica: boolean;
}

/**
 * The one-line complaint about a malformed readUrl, before anything connects; `name` is
 * what the user set (`readUrl`, or `OUTBATCH_READ_URL`).
 */
export function checkReadUrl(readUrl: string, name = 'readUrl'): string {
  return checkDatabaseUrl(
    readUrl,
    name,
    'postgres://user:password@host:port/database of a streaming replica',
  );
}

interface Identity {
  system: string | null;
  database: string;
  recovery: boolean;
}

/**
 * The cluster's system identifier (shared by a primary and its physical replicas, different
 * for any other cluster), the database name, and whether the server is a standby. A role
 * that may not call pg_control_system() (revoked by an administrator) gets null: not compared.
 */
async function identity(db: pg.Pool): Promise<Identity> {
  const { rows } = await db.query<{ recovery: boolean; database: string }>(
    'SELECT pg_is_in_recovery() AS recovery, current_database() AS database',
  );
  const system = await db
    .query<{ id: string }>('SELECT system_identifier::text AS id FROM pg_control_system()')
    .then((result) => result.rows[0]?.id ?? null)
    .catch(() => null);
  return { system, database: rows[0]!.database, recovery: rows[0]!.recovery };
}

/** Reads on `readUrl` when given, checked against the primary; else the app's own pool. */
export function makeReads(options: {
  readUrl: string | undefined;
  /** What the user set, for messages: `readUrl` (default) or `OUTBATCH_READ_URL`. */
  readUrlName?: string;
  database: () => Promise<Database>;
  log: Logger;
  pool?: PoolOptions;
}) {
  const name = options.readUrlName ?? 'readUrl';
  const readUrl = options.readUrl === undefined ? undefined : checkReadUrl(options.readUrl, name);
  let opening: Promise<Reads> | undefined;
  let pool: pg.Pool | undefined;

  async function open(url: string): Promise<Reads> {
    const primary = await options.database();
    // The replica may sit behind a pooler of its own whatever the primary's route: detected
    // here, as for databaseUrl (pooler.ts), so no startup option or named statement reaches it.
    const pooler = await checkConnection(url, options.pool?.connectTimeoutMs, true).catch(
      (error: unknown) => {
        // Say which URL: the primary may be fine. Still a ConnectionError, retryable as it was.
        if (!(error instanceof ConnectionError)) throw error;
        throw new ConnectionError(`${name}: ${error.message}`, error.retryable, { cause: error.cause });
      },
    );
    pool = createPool(url, options.log, {
      ...options.pool,
      pooler: pooler ?? 'none',
      preparedStatements: pooler === 'pgbouncer' ? false : options.pool?.preparedStatements,
      applicationName: 'outbatch-reads',
    });
    const target = describeTarget(url);
    const mine = await identity(primary.pool);
    const theirs = await identity(pool).catch((error) => {
      const failure = connectionFailure(error, url);
      throw new ConnectionError(`${name}: ${failure.message}`, failure.retryable, { cause: error });
    });
    if (mine.system && theirs.system && mine.system !== theirs.system) {
      throw new ValidationError(
        `${name} (${target}) is another cluster (system identifier ${theirs.system}, the primary's is ${mine.system}): point it at a streaming replica of databaseUrl`,
      );
    }
    if (mine.database !== theirs.database) {
      throw new ValidationError(
        `${name} (${target}) names database "${theirs.database}" but databaseUrl names "${mine.database}": use the same database on the replica`,
      );
    }
    if (!theirs.recovery) {
      options.log.warn(
        { target },
        `${name} is not a standby (not in recovery): reads go there as to the primary, page reads outside the page transaction`,
      );
    }
    // A primary at readUrl reads gap-safely on its own snapshot just as a replica does, so
    // it takes the same path; `replica` says which it is for status and logs.
    return { pool, url, separate: true, replica: theirs.recovery };
  }

  return {
    get(): Promise<Reads> {
      if (readUrl === undefined) {
        return options
          .database()
          .then((db) => ({ pool: db.pool, url: db.url, separate: false, replica: false }));
      }
      if (!opening) {
        opening = open(readUrl);
        // A failed open (replica down at start, refused as another cluster) is tried again
        // on the next read, so a replica that comes up later is used without a restart.
        opening.catch(async () => {
          opening = undefined;
          await pool?.end().catch(() => {});
          pool = undefined;
        });
      }
      return opening;
    },
    async close(): Promise<void> {
      const opened = await opening?.catch(() => undefined);
      opening = undefined;
      await opened?.pool
        .end()
        .catch((error) => options.log.warn({ err: error }, 'closing the read pool failed'));
    },
  };
}
