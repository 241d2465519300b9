/** Queryable: the one thing an operation needs to run SQL (a pool or the caller's client). */
import type { QueryResult, QueryResultRow } from 'pg';

/**
 * What every operation needs to run SQL: a pool, or a caller's client inside
 * their own transaction. Passing the caller's client is how a defer or an append
 * becomes part of the caller's business write.
 */
export interface Queryable {
  query<R extends QueryResultRow = QueryResultRow>(text: string, values?: unknown[]): Promise<QueryResult<R>>;
}
