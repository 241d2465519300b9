/** openDatabase: a pool on DATABASE_URL, or on an embedded server started for it. */
import type pg from 'pg';
import type { Logger } from 'pino';
import { checkConnection, createPool, type PoolOptions } from './connection.js';
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
