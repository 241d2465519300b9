/**
 * Whether outbatch talks to PostgreSQL directly or through a transaction pooler (PgBouncer
 * in `pool_mode = transaction`), and what follows from it for the connections it opens.
 * Behind a transaction pooler each transaction may run on another server connection, so
 * nothing that lives in a session survives from one to the next: named prepared
 * statements, session `SET`s, session advisory locks, LISTEN, and the backend pid a
 * client was given (docs/pgbouncer.md).
 */
import type pg from 'pg';
import { ValidationError } from '../errors.js';
import { sqlState } from './retryable.js';

/** `pgbouncer`: a transaction-mode pooler is in the way; `none`: connected to PostgreSQL itself. */
export type Pooler = 'pgbouncer' | 'none';

/** What openDatabase settled on for its pools and its LISTEN connections. */
export interface ConnectionRoute {
  pooler: Pooler;
  /** Named prepared statements on outbatch's own connections. */
  preparedStatements: boolean;
  /** Where LISTEN connects; undefined behind a pooler with no `listenUrl`: wake-ups come from polling. */
  listenUrl: string | undefined;
}

export const DIRECT: ConnectionRoute = { pooler: 'none', preparedStatements: true, listenUrl: undefined };

/** `pooler` from an option or OUTBATCH_POOLER; undefined (or empty) means "detect". */
export function checkPooler(value: unknown, source: string): Pooler | undefined {
  if (value === undefined || value === '') return undefined;
  if (value === 'pgbouncer' || value === 'none') return value;
  throw new ValidationError(
    `${source} ${JSON.stringify(value)} is invalid: expected "pgbouncer" (a transaction-mode pooler) or "none" (direct)`,
  );
}

/**
 * Detection, on the connection openDatabase checks anyway (one round trip, once): PostgreSQL
 * sends each client its own backend pid in BackendKeyData (node-postgres' `processID`),
 * so on a direct connection it equals `pg_backend_pid()`. A pooler that hands one client
 * several server connections must answer cancel requests itself, so it sends a key of its
 * own (PgBouncer: random), and the two differ. A plain TCP proxy passes the key through
 * and is, rightly, taken for direct. PgBouncer in session mode is taken for a transaction
 * pooler too: safe, at the price of the prepared statements and LISTEN it would allow.
 */
export async function detectPooler(client: pg.Client): Promise<Pooler> {
  const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  const given = (client as unknown as { processID?: number }).processID;
  return given === rows[0]?.pid ? 'none' : 'pgbouncer';
}

// Pools outbatch opened, and the clients they made, by what may be done on them. A client a
// caller hands in is in neither set: outbatch never prepares a statement on it.
const preparing = new WeakSet<object>();
const pooled = new WeakSet<object>();

/** Called by createPool: records what may be done on `pool` and on every client it connects. */
export function markPool(pool: pg.Pool, route: Pick<ConnectionRoute, 'pooler' | 'preparedStatements'>): void {
  const mark = (target: object) => {
    if (route.preparedStatements) preparing.add(target);
    if (route.pooler !== 'none') pooled.add(target);
  };
  mark(pool);
  pool.on('connect', mark);
}

/** Whether a named prepared statement may be used on `db`: only on outbatch's own direct connections. */
export function mayPrepare(db: object): boolean {
  return preparing.has(db);
}

/** Whether `db` (an outbatch pool or one of its clients) reaches PostgreSQL through a pooler. */
export function isBehindPooler(db: object): boolean {
  return pooled.has(db);
}

/**
 * PgBouncer's refusal of a startup parameter (`lock_timeout`, `options`) that only a direct
 * connection is sent: `pooler: 'none'` (OUTBATCH_POOLER=none) set in front of PgBouncer.
 * Its SQLSTATE is 08P01, which reads as connection trouble and was retried for a minute at
 * start; it never goes away, so it is said as the setting to change. Undefined otherwise.
 */
export function poolerRefusedStartup(error: unknown): ValidationError | undefined {
  const message = (error as { message?: unknown } | null)?.message;
  if (sqlState(error) !== '08P01' || typeof message !== 'string') return undefined;
  const refused = /^unsupported startup parameter: (\S+)/.exec(message);
  if (!refused) return undefined;
  return new ValidationError(
    `the server refused startup parameter "${refused[1]}", as PgBouncer does: pool.pooler (OUTBATCH_POOLER) is "none" but a transaction pooler is in the way; unset it to detect the pooler, or set "pgbouncer"`,
    { cause: error },
  );
}
