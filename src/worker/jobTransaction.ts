/**
 * Ending a job's own transaction (`ctx.tx`) without ever waiting long on its connection.
 * A handler connection can be busy (a handler that ignored its abort is still inside a
 * statement, and node-postgres queues our ROLLBACK behind it) or half-open (the peer gone
 * without a FIN: no reply ever comes). Either way the worker must not hang — a job left
 * `doing` under a live worker, a shutdown past its `shutdownTimeout` — so our statements on
 * it have a deadline, and a connection we give up on has its server backend terminated
 * from a control connection: its transaction rolls back and its locks go at once, instead
 * of when TCP keepalive notices (minutes) or the handler's statement ends.
 */
import type pg from 'pg';
import type { Logger } from 'pino';

export interface TransactionEnds {
  /** The worker's control pool, to terminate a backend from. */
  control: pg.Pool;
  /** How long one of our statements on a handler connection may go unanswered. */
  deadlineMs: number;
  log: Logger;
}

/** `text` on the job's connection, abandoned after the deadline (node-postgres `query_timeout`). */
export function onDeadline(
  client: pg.PoolClient,
  ends: TransactionEnds,
  text: string,
): Promise<pg.QueryResult> {
  // query_timeout per statement is node-postgres' (client.js); its typings omit it.
  return client.query({ text, query_timeout: ends.deadlineMs } as pg.QueryConfig);
}

/**
 * Rolls the job's transaction back and destroys the connection (a handler that outlived
 * its timeout may still hold it). `busy`: the handler is known to be still running (it
 * ignored the shutdown's abort), so no ROLLBACK is tried: the backend is terminated.
 */
export async function discardTransaction(
  client: pg.PoolClient,
  ends: TransactionEnds,
  options: { busy?: boolean } = {},
): Promise<void> {
  if (!options.busy) {
    try {
      await onDeadline(client, ends, 'ROLLBACK');
      client.release(true);
      return;
    } catch {
      // no answer in time, or the connection is gone: terminate below
    }
  }
  await abandonConnection(client, ends);
}

/**
 * Destroys the connection and terminates its server backend (the same role may always
 * terminate its own backends). If the backend is already gone, or the control pool cannot
 * reach the server either, there is nothing more to do: the server ends the session when
 * it notices the socket closed.
 */
export async function abandonConnection(client: pg.PoolClient, ends: TransactionEnds): Promise<void> {
  const pid = (client as unknown as { processID?: number }).processID;
  client.release(true);
  if (!pid) return;
  try {
    await ends.control.query('SELECT pg_terminate_backend($1)', [pid]);
  } catch (error) {
    ends.log.warn(
      { err: error, pid },
      'could not terminate an abandoned handler connection; the server ends it when it notices',
    );
  }
}
