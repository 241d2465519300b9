/** openDatabase: a pool on DATABASE_URL, or on an embedded server started for it. */
import type pg from 'pg';
import type { Logger } from 'pino';
import { checkConnection, createPool, type PoolOptions } from './connection.js';
import { type EmbeddedServer, startEmbedded } from './embedded.js';

export interface DatabaseOptions extends PoolOptions {
  /** A postgres:// URL. Without one, the embedded server is started. */
  databaseUrl?: string;
  /** Data folder of the embedded server (default `.outbatch/pg`). */
  dataDir?: string;
  log: Logger;
}

export interface Database {
  pool: pg.Pool;
  /** The URL connected to (for LISTEN connections and child processes); never log it. */
  url: string;
  embedded?: EmbeddedServer;
  close(): Promise<void>;
}

/** Connects to `databaseUrl`, or starts the embedded server, and checks the connection works. */
export async function openDatabase(options: DatabaseOptions): Promise<Database> {
  const { log } = options;
  const embedded = options.databaseUrl ? undefined : await startEmbedded({ dataDir: options.dataDir, log });
  const url = options.databaseUrl ?? embedded!.url;
  try {
    await checkConnection(url, options.connectTimeoutMs);
  } catch (error) {
    await embedded?.stop();
    throw error;
  }
  const pool = createPool(url, log, options);
  let closing: Promise<void> | undefined;
  return {
    pool,
    url,
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
