/** Running a statement on node-postgres as a named prepared statement, with rows as objects or arrays. */
import pg from 'pg';
import { mayPrepare } from './pooler.js';
import type { Queryable } from './queryable.js';

// Statement names and row modes are node-postgres options: only its pools and clients take
// them. Any other Queryable (another driver, a wrapper) gets plain text and object rows.
function isNodePostgres(db: Queryable): db is pg.Pool | pg.Client {
  return db instanceof pg.Pool || db instanceof pg.Client;
}

/**
 * pg clients cache named statements per connection, which saves the parse and plan on
 * every call of a hot statement (defer, claim, complete, fail). `name` must be unique per
 * text: include the schema in it. The name is used only on outbatch's own connections to
 * a server known to be direct (pooler.ts): behind a transaction pooler the next call may
 * land on a server connection that never saw the statement, and a client the caller hands
 * in may be behind one without our knowing. Elsewhere the statement goes unnamed, parsed
 * each time. `queryTimeoutMs`: abandon the statement if no answer comes in time
 * (node-postgres only).
 */
export function runPrepared<R extends pg.QueryResultRow>(
  db: Queryable,
  name: string,
  text: string,
  values: unknown[],
  options: { queryTimeoutMs?: number } = {},
): Promise<pg.QueryResult<R>> {
  if (isNodePostgres(db)) {
    // query_timeout per statement is node-postgres' (client.js); its typings omit it.
    const config = { text, values, query_timeout: options.queryTimeoutMs } as pg.QueryConfig;
    if (mayPrepare(db)) config.name = name;
    return (db as pg.Client).query<R>(config);
  }
  return db.query<R>(text, values);
}

/**
 * Rows as arrays, in column order: node-postgres builds an array per row much faster than
 * an object keyed by column name (a processor page of 5,000 events read 10 % faster).
 * Another driver's object rows are taken in column order. With `name` the statement is
 * prepared as in runPrepared; `queryTimeoutMs` abandons it as there.
 */
export async function runForArrays(
  db: Queryable,
  text: string,
  values: unknown[],
  name?: string,
  queryTimeoutMs?: number,
): Promise<unknown[][]> {
  if (isNodePostgres(db)) {
    // query_timeout per statement is node-postgres' (client.js); its typings omit it.
    const config = { text, values, rowMode: 'array', query_timeout: queryTimeoutMs } as pg.QueryArrayConfig;
    if (name && mayPrepare(db)) config.name = name;
    const { rows } = await db.query(config);
    return rows;
  }
  const { rows } = await db.query(text, values);
  return rows.map((row) => Object.values(row));
}
