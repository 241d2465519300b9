import type pg from 'pg';

/**
 * Waits until every committed event of `schema` is below the cluster's xmin, i.e. readable.
 * Test files run in parallel on one server, and another file's open transaction holds
 * readers back for a while: the documented cost of gap safety (latency, never loss).
 */
export async function waitUntilReadable(pool: pg.Pool, schema: string): Promise<void> {
  for (;;) {
    const { rows } = await pool.query(
      `SELECT coalesce((SELECT max(tx_id::text::numeric) FROM "${schema}".events)
                       < pg_snapshot_xmin(pg_current_snapshot())::text::numeric, true) AS readable`,
    );
    if (rows[0].readable) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
