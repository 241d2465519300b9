/** Connecting: checking and redacting a connection string, creating a pg pool, a refused connection as a ConnectionError. */
import pg from 'pg';
import type { Logger } from 'pino';
import { ConnectionError, ValidationError } from '../errors.js';
import { OWN_STATEMENT_TIMEOUT_MS, setOwnDeadline } from './deadline.js';
import { detectPooler, markPool, type Pooler } from './pooler.js';
import { isRetryable, sqlState } from './retryable.js';

export interface PoolOptions {
  /** Connections in the pool (default 10). */
  max?: number;
  /** The first connection check gives up after this long, so a wrong host fails fast (default 5 s). */
  connectTimeoutMs?: number;
  /**
   * How long a query may wait for a pooled connection (busy pool) or for a new one (default
   * 30 s). Longer than the check above: a loaded pool must not fail work that would succeed.
   */
  acquireTimeoutMs?: number;
  applicationName?: string;
  /**
   * A query with no answer for this long fails and its connection is discarded (default:
   * none). A half-open connection — the peer gone without a FIN — otherwise hangs its
   * query for good; TCP keepalive is on as well, to close such sockets.
   */
  queryTimeoutMs?: number;
  /**
   * Server-side `lock_timeout` for every statement of the pool (default: the server's). The
   * client's deadline only abandons a statement; without it the server goes on waiting for
   * a lock as long as it is held, and each retry leaves one more backend waiting.
   */
  lockTimeoutMs?: number;
  /**
   * false turns the server's JIT compilation off for the pool's statements (default: the
   * server's setting). A short statement with a high cost estimate otherwise spends
   * hundreds of milliseconds compiling; the worker's own pools turn it off (workerPools.ts).
   * Sent as the connection's `options`, after PGOPTIONS; a URL that sets `options` wins.
   * Not sent behind a pooler (see `pooler`).
   */
  jit?: boolean;
  /**
   * false turns the planner's sorts off where an index gives the order (`enable_sort =
   * off`; a sort with no alternative is still made). The worker's control pool sets it for
   * its claim: with statistics taken while the queue was empty (a queue vacuumed empty, then
   * a burst of defers, before autovacuum analyzes), the planner estimated ~100 due jobs and
   * sorted the whole backlog on disk for every claim instead of walking jobs_claim: 60-100 ms
   * a claim at 200k queued jobs, 16k jobs/s instead of 80k (ops/bench/RESULTS.md). Sent like
   * `jit`; not behind a pooler.
   */
  sort?: boolean;
  /**
   * What is between outbatch and PostgreSQL: `'pgbouncer'`, a transaction-mode pooler, or
   * `'none'`. Default: OUTBATCH_POOLER, else detected on the first connection (pooler.ts).
   * Behind a pooler the pools send no startup parameters PgBouncer refuses (`options`,
   * `lock_timeout`: `jit` and `lockTimeoutMs` are not applied), prepare no statements, and
   * LISTEN goes to `listenUrl` only. See docs/pgbouncer.md.
   */
  pooler?: Pooler;
  /**
   * Named prepared statements on outbatch's own connections (default: on when direct, off
   * behind a pooler). On behind a pooler only if it keeps prepared statements itself
   * (PgBouncer 1.21+ with `max_prepared_statements`). Never on a client you hand in.
   */
  preparedStatements?: boolean;
  /**
   * outbatch's own statements on this pool — processor page reads, checkpoints and their
   * BEGIN/COMMIT, processor triggers, schedule passes — are abandoned after this long with
   * no answer, and the connection's backend terminated (default 60 s). A half-open
   * connection would otherwise stop a processor or the scheduler until TCP keepalive
   * notices. Your own statements (a processor's `ctx.tx`) keep `queryTimeoutMs`.
   */
  ownStatementTimeoutMs?: number;
}

/** `host:port` of a connection string, for messages; never includes the password. */
export function describeTarget(databaseUrl: string): string {
  try {
    const url = new URL(databaseUrl);
    const host = url.hostname || url.searchParams.get('host') || 'localhost';
    return `${host}:${url.port || '5432'}`;
  } catch {
    return 'the configured server';
  }
}

/** The connection string with its password replaced, safe to print or log. */
export function redactUrl(databaseUrl: string): string {
  try {
    const url = new URL(databaseUrl);
    if (url.password) url.password = '***';
    return url.toString();
  } catch {
    return '<unparseable connection string>';
  }
}

/**
 * Throws one line naming `what` (the option) unless `databaseUrl` is a postgres:// URL;
 * `expected` says what was wanted instead.
 */
export function checkDatabaseUrl(
  databaseUrl: string,
  what = 'database URL',
  expected = 'postgres://user:password@host:port/database',
): string {
  let url: URL;
  try {
    url = new URL(databaseUrl);
  } catch {
    throw new ValidationError(`${what} is not a valid URL: expected ${expected}`);
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') {
    throw new ValidationError(`${what} has protocol "${url.protocol}": expected ${expected}`);
  }
  return databaseUrl;
}

/**
 * A pool whose idle connections may die (server restart, failover) without taking
 * the process down: the error is logged and the pool replaces the connection.
 */
export function createPool(databaseUrl: string, log: Logger, options: PoolOptions = {}): pg.Pool {
  checkDatabaseUrl(databaseUrl);
  // PgBouncer refuses a connection whose startup packet carries parameters it does not
  // track ("unsupported startup parameter"): `options` and `lock_timeout` among them.
  const direct = (options.pooler ?? 'none') === 'none';
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max: options.max ?? 10,
    connectionTimeoutMillis: options.acquireTimeoutMs ?? 30_000,
    idleTimeoutMillis: 30_000,
    application_name: options.applicationName ?? 'outbatch',
    query_timeout: options.queryTimeoutMs,
    lock_timeout: direct ? options.lockTimeoutMs : undefined,
    // Given here, options replaces PGOPTIONS (node-postgres' default for it): keep those.
    options: direct ? startupOptions(options) : undefined,
    keepAlive: true,
    keepAliveInitialDelayMillis: 5_000,
  });
  setOwnDeadline(pool, options.ownStatementTimeoutMs ?? OWN_STATEMENT_TIMEOUT_MS);
  markPool(pool, {
    pooler: options.pooler ?? 'none',
    preparedStatements: options.preparedStatements ?? direct,
  });
  pool.on('error', (error) => {
    log.warn(
      { err: error, target: describeTarget(databaseUrl) },
      'idle database connection lost; it will be replaced',
    );
  });
  // A checked-out client that loses its socket between queries emits 'error';
  // without a listener that would crash the process. The next query fails instead.
  pool.on('connect', (client) => {
    client.on('error', () => {});
  });
  return pool;
}

/** Turns a failure to connect into one line naming host:port and the reason. */
export function connectionFailure(error: unknown, databaseUrl: string): ConnectionError {
  const target = describeTarget(databaseUrl);
  const code = sqlState(error);
  const raw = error instanceof Error ? error.message : String(error);
  const reasons: Record<string, string> = {
    ECONNREFUSED: 'connection refused (is PostgreSQL running and listening on that port?)',
    ENOTFOUND: 'host not found (check the host name)',
    EAI_AGAIN: 'host name lookup failed temporarily',
    ETIMEDOUT: 'connection timed out',
    EHOSTUNREACH: 'host unreachable',
    '28P01': 'password authentication failed (check the user and password)',
    '28000': 'authentication rejected by the server (check pg_hba.conf and the user)',
    '3D000': 'database does not exist (create it or fix the database name)',
    '57P03': 'the server is starting up or shutting down',
  };
  const reason =
    (code && reasons[code]) ?? (/timeout/i.test(raw) ? 'connection timed out' : raw.split('\n')[0]);
  return new ConnectionError(`cannot connect to PostgreSQL at ${target}: ${reason}`, isRetryable(error), {
    cause: error,
  });
}

/**
 * Opens and closes one connection of its own, so a bad URL fails fast with a clear message;
 * with `detect`, also says whether a transaction pooler is in the way (pooler.ts).
 */
export async function checkConnection(
  databaseUrl: string,
  timeoutMs = 5_000,
  detect = false,
): Promise<Pooler | undefined> {
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: timeoutMs });
  client.on('error', () => {});
  try {
    await client.connect();
    return detect ? await detectPooler(client) : undefined;
  } catch (error) {
    throw connectionFailure(error, databaseUrl);
  } finally {
    await client.end().catch(() => {});
  }
}

/** The `options` startup parameter for `jit: false` and `sort: false`, after PGOPTIONS; undefined when neither. */
function startupOptions(options: { jit?: boolean; sort?: boolean }): string | undefined {
  const settings = [
    ...(options.jit === false ? ['-c jit=off'] : []),
    ...(options.sort === false ? ['-c enable_sort=off'] : []),
  ];
  return settings.length === 0 ? undefined : [process.env.PGOPTIONS ?? '', ...settings].join(' ').trim();
}
