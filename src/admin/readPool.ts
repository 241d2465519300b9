/**
 * The dashboard's own small pool for its reads. Two reasons: scrapes and page refreshes
 * never take connections the worker in the same process needs, and JIT is off — the
 * planner over-costs the dashboard's short queries (tables without statistics, capped
 * counts) and JIT-compiled them for 100-500 ms each, on queries that run in 5-40 ms.
 * With `readUrl` it connects to the replica: every dashboard read goes there.
 */
import pg from 'pg';
import type { App } from '../app.js';
import { isBehindPooler } from '../db/pooler.js';
import type { Logger } from '../log.js';

export function makeReadPool(app: App, log: Logger) {
  let opening: Promise<pg.Pool> | undefined;
  return {
    get(): Promise<pg.Pool> {
      // app.reads(): the readUrl replica when there is one, else the database.
      opening ??= app.reads().then((reads) => {
        const pool = new pg.Pool({
          connectionString: reads.url,
          max: 4,
          connectionTimeoutMillis: 30_000,
          idleTimeoutMillis: 30_000,
          application_name: 'outbatch-dashboard',
          // PgBouncer refuses a startup packet with `options` (docs/pgbouncer.md).
          options: isBehindPooler(reads.pool) ? undefined : '-c jit=off',
        });
        pool.on('error', (error) =>
          log.warn({ err: error }, 'idle dashboard connection lost; it will be replaced'),
        );
        return pool;
      });
      // A failed open (database down at start) is retried on the next request.
      opening.catch(() => {
        opening = undefined;
      });
      return opening;
    },
    async close(): Promise<void> {
      const pool = await opening?.catch(() => undefined);
      opening = undefined;
      await pool?.end();
    },
  };
}
