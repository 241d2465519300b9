/**
 * Deadlines on outbatch's own statements. A statement with no answer by its deadline is
 * abandoned by the client (node-postgres `query_timeout`: the connection is discarded), so
 * a half-open connection — the peer gone without a FIN — cannot hang the caller for good.
 * What the server did meanwhile is the "reply lost" case each caller already handles.
 */
import type pg from 'pg';
import type { Queryable } from './queryable.js';

/** `pool` as a Queryable whose every statement is abandoned after `ms`. */
export function withDeadline(pool: pg.Pool | pg.PoolClient, ms: number): Queryable {
  return {
    // query_timeout per statement is node-postgres' (client.js); its typings omit it.
    query: (text, values) => pool.query({ text, values, query_timeout: ms } as pg.QueryConfig),
  };
}
