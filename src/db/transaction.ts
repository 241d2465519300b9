/** withTransaction: BEGIN/COMMIT on one pooled connection, rolled back on error. */
import type pg from 'pg';

/**
 * Runs `fn` inside BEGIN/COMMIT on one pooled connection; rolls back and rethrows
 * on error. A connection that failed mid-transaction is destroyed, not reused.
 */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    try {
      await client.query('ROLLBACK');
    } catch (rollbackError) {
      broken = rollbackError as Error;
    }
    throw error;
  } finally {
    client.release(broken);
  }
}
