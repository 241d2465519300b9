/**
 * Deadlines on outbatch's own statements. A statement with no answer by its deadline is
 * abandoned by the client (node-postgres `query_timeout`), so a half-open connection — the
 * peer gone without a FIN — cannot hang the caller for good; a connection given up on is
 * destroyed and its server backend terminated, so its transaction and locks go at once
 * (not when TCP keepalive notices, minutes later). What the server did meanwhile is the
 * "reply lost" case each caller already handles.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { isBehindPooler } from './pooler.js';
import type { Queryable } from './queryable.js';

/** Default deadline of outbatch's own statements on the app pool (`pool.ownStatementTimeoutMs`). */
export const OWN_STATEMENT_TIMEOUT_MS = 60_000;
const ownDeadlines = new WeakMap<pg.Pool, number>();

/** Set by createPool: the deadline of outbatch's own statements on `pool`. */
export function setOwnDeadline(pool: pg.Pool, ms: number): void {
  ownDeadlines.set(pool, ms);
}

export function ownDeadline(pool: pg.Pool): number {
  return ownDeadlines.get(pool) ?? OWN_STATEMENT_TIMEOUT_MS;
}

/** The pool as a Queryable for outbatch's own statements: each abandoned after the pool's own deadline. */
export function withOwnDeadline(pool: pg.Pool): Queryable {
  return withDeadline(pool, ownDeadline(pool));
}

/** `pool` (or a client) as a Queryable whose every statement is abandoned after `ms`. */
export function withDeadline(pool: pg.Pool | pg.PoolClient, ms: number): Queryable {
  return {
    // query_timeout per statement is node-postgres' (client.js); its typings omit it.
    query: (text, values) => pool.query({ text, values, query_timeout: ms } as pg.QueryConfig),
  };
}

/**
 * Runs `fn` — outbatch's statements only — with every statement on `client` abandoned
 * after `ms` (node-postgres reads the connection's `query_timeout` at each query). Not
 * around a caller's code: their statements keep whatever deadline they had.
 */
export async function underDeadline<T>(client: pg.PoolClient, ms: number, fn: () => Promise<T>): Promise<T> {
  const params = (client as unknown as { connectionParameters: { query_timeout?: number } })
    .connectionParameters;
  const before = params.query_timeout;
  params.query_timeout = ms;
  try {
    return await fn();
  } finally {
    params.query_timeout = before;
  }
}

/**
 * Destroys `client` and terminates its server backend through `other` (a connection of the
 * same role may always terminate its own backends). If the backend is already gone, or
 * `other` cannot reach the server either, the server ends the session when it notices.
 * Behind a transaction pooler the client's pid is the pooler's cancel key, not a backend's
 * (it could even name an unrelated one): nothing is terminated; the pooler closes the
 * server connection of a client that left mid-statement or mid-transaction.
 */
export async function abandonConnection(
  client: pg.PoolClient,
  other: Queryable,
  log?: Logger,
): Promise<void> {
  const pid = (client as unknown as { processID?: number }).processID;
  const pooled = isBehindPooler(client);
  client.release(true);
  if (!pid || pooled) return;
  try {
    await other.query('SELECT pg_terminate_backend($1)', [pid]);
  } catch (error) {
    log?.warn(
      { err: error, pid },
      'could not terminate an abandoned connection; the server ends it when it notices',
    );
  }
}
