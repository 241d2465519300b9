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
import { abandonConnection, withDeadline } from '../db/deadline.js';

export interface TransactionEnds {
  /** The worker's control pool, to terminate a backend from. */
  control: pg.Pool;
  /** How long one of our statements on a handler connection may go unanswered. */
  deadlineMs: number;
  /**
   * How long the job's COMMIT may take: it runs the job's own deferred work (deferred
   * constraints and triggers), so it gets the stall timeout, not the control deadline (a
   * 3 s COMMIT was killed at a 2 s deadline and dead-lettered, found by review).
   */
  commitDeadlineMs: number;
  log: Logger;
  /** Terminations not yet answered: the worker awaits them before closing its pools. */
  terminating: Set<Promise<void>>;
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
      await withDeadline(client, ends.deadlineMs).query('ROLLBACK');
      client.release(true);
      return;
    } catch {
      // no answer in time, or the connection is gone: terminate below
    }
  }
  abandon(client, ends);
}

/**
 * Destroys the connection and terminates its backend (db/deadline.ts). Not awaited by the
 * caller — with the server down, asking it would wait for a connection — but tracked, so
 * the worker's shutdown waits for it before closing the control pool.
 */
export function abandon(client: pg.PoolClient, ends: TransactionEnds): void {
  const terminating = abandonConnection(client, ends.control, ends.log).finally(() =>
    ends.terminating.delete(terminating),
  );
  ends.terminating.add(terminating);
}
