/** openDatabase: a pool on DATABASE_URL, or on an embedded server started for it. */
import pg from 'pg';
import type { Logger } from 'pino';
import { checkConnection, createPool, describeTarget, type PoolOptions } from './connection.js';
import { type EmbeddedServer, startEmbedded } from './embedded.js';
import type { ConnectionRoute } from './pooler.js';

export interface DatabaseOptions extends PoolOptions {
  /** A postgres:// URL. Without one, the embedded server is started. */
  databaseUrl?: string;
  /** Data folder of the embedded server (default `.outbatch/pg`). */
  dataDir?: string;
  /** A direct postgres:// URL for LISTEN when `databaseUrl` goes through a transaction pooler. */
  listenUrl?: string;
  log: Logger;
}

export interface Database {
  pool: pg.Pool;
  /** The URL connected to (for LISTEN connections and child processes); never log it. */
  url: string;
  /** Direct or through a pooler, and what follows: prepared statements, where LISTEN goes. */
  route: ConnectionRoute;
  /**
   * Where LISTEN connections go (`route.listenUrl`). Undefined behind a pooler with no
   * `listenUrl`, and then the first caller logs the one warning that wake-ups come from
   * polling: said once per database, not by each worker, trigger and follower that polls,
   * nor by commands that never listen.
   */
  listenTarget(): string | undefined;
  embedded?: EmbeddedServer;
  close(): Promise<void>;
}

/** Connects to `databaseUrl`, or starts the embedded server, and checks the connection works. */
export async function openDatabase(options: DatabaseOptions): Promise<Database> {
  const { log } = options;
  const embedded = options.databaseUrl ? undefined : await startEmbedded({ dataDir: options.dataDir, log });
  const url = options.databaseUrl ?? embedded!.url;
  let pooler = options.pooler ?? (embedded ? 'none' : undefined);
  try {
    const detected = await checkConnection(url, options.connectTimeoutMs, pooler === undefined);
    pooler ??= detected ?? 'none';
  } catch (error) {
    await embedded?.stop();
    throw error;
  }
  const route: ConnectionRoute = {
    pooler,
    preparedStatements: options.preparedStatements ?? pooler === 'none',
    listenUrl: options.listenUrl ?? (pooler === 'none' ? url : undefined),
  };
  if (pooler !== 'none') {
    log.info(
      { pooler, preparedStatements: route.preparedStatements, listen: Boolean(route.listenUrl) },
      'connected through a transaction pooler: no session state, no startup options',
    );
  }
  const pool = createPool(url, log, { ...options, pooler, preparedStatements: route.preparedStatements });
  let closing: Promise<void> | undefined;
  let warned = false;
  let checked = false;
  return {
    pool,
    url,
    route,
    listenTarget() {
      if (!route.listenUrl && !warned) {
        warned = true;
        log.warn(
          'behind a transaction pooler with no listenUrl: LISTEN/NOTIFY is off, workers and processors wake by polling; set listenUrl (OUTBATCH_LISTEN_URL) to a direct connection',
        );
      }
      if (options.listenUrl && !checked) {
        checked = true;
        void checkListenTarget(pool, options.listenUrl, log);
      }
      return route.listenUrl;
    },
    embedded,
    close() {
      closing ??= (async () => {
        await pool.end().catch((error) => log.warn({ err: error }, 'closing the pool failed'));
        await embedded?.stop();
      })();
      return closing;
    },
  };
}

/** The database, and its cluster's system identifier (null where a role may not read it). */
async function identity(db: pg.Pool | pg.Client): Promise<{ database: string; system: string | null }> {
  const { rows } = await db.query<{ database: string }>('SELECT current_database() AS database');
  const system = await db
    .query<{ id: string }>('SELECT system_identifier::text AS id FROM pg_control_system()')
    .then((result) => result.rows[0]?.id ?? null)
    .catch(() => null);
  return { database: rows[0]!.database, system };
}

/**
 * A NOTIFY reaches only listeners on the same database of the same server: a `listenUrl`
 * naming another one is accepted by LISTEN and then hears nothing, so every wake-up falls
 * back to the poll without a word (found by review: a job waited the whole poll interval).
 * Checked once, the first time something would listen, off the start-up path (the LISTEN
 * server may be down for now; the listener retries it). A mismatch is said once, as an error.
 */
async function checkListenTarget(pool: pg.Pool, listenUrl: string, log: Logger): Promise<void> {
  const client = new pg.Client({ connectionString: listenUrl, connectionTimeoutMillis: 5_000 });
  client.on('error', () => {});
  try {
    await client.connect();
    const [mine, theirs] = await Promise.all([identity(pool), identity(client)]);
    const otherCluster = mine.system !== null && theirs.system !== null && mine.system !== theirs.system;
    if (otherCluster || mine.database !== theirs.database) {
      log.error(
        { listen: describeTarget(listenUrl) },
        `listenUrl (${describeTarget(listenUrl)}) is database "${theirs.database}"${otherCluster ? ' on another cluster' : ''}, but databaseUrl is "${mine.database}": no notification reaches it, and workers and processors wake by polling only; point listenUrl at databaseUrl's PostgreSQL server and database`,
      );
    }
  } catch {
    // Unreachable for now: the listener itself says so, and retries.
  } finally {
    await client.end().catch(() => {});
  }
}
