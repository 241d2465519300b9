/** withTransaction: BEGIN/COMMIT on one pooled connection, rolled back on error. */
import type pg from 'pg';
import { abandonConnection, ownDeadline, withDeadline } from './deadline.js';
import { failureKind } from './retryable.js';

/**
 * Runs `fn` inside BEGIN/COMMIT on one pooled connection; rolls back and rethrows on
 * error. BEGIN, COMMIT and ROLLBACK have the pool's deadline for outbatch's own
 * statements: a connection with no answer in time (half-open, or dead) is destroyed and
 * its backend terminated, so a COMMIT that never arrived rolls back at once. A connection
 * that failed mid-transaction is destroyed, not reused.
 */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  const own = withDeadline(client, ownDeadline(pool));
  let broken: Error | undefined;
  let lost = false;
  try {
    await own.query('BEGIN');
    const result = await fn(client);
    await own.query('COMMIT');
    return result;
  } catch (error) {
    // No answer (or no connection): a ROLLBACK would wait behind the silent statement.
    lost = failureKind(error) === 'connection';
    if (!lost) {
      try {
        await own.query('ROLLBACK');
      } catch (rollbackError) {
        broken = rollbackError as Error;
        lost = failureKind(rollbackError) === 'connection';
      }
    }
    throw error;
  } finally {
    // Not awaited: with the server down, asking it to terminate would wait for a connection.
    if (lost) void abandonConnection(client, pool);
    else client.release(broken);
  }
}
