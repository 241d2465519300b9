/** Housekeeping the workers do between claims: nothing here is on the hot path. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';

/** Deletes succeeded rows kept by `keepSucceededFor` once their time is up. */
export async function purgeSucceeded(db: Queryable, schema: string, now: Date | null): Promise<number> {
  const { rowCount } = await db.query(
    `DELETE FROM ${quoteSchema(schema)}.jobs
     WHERE status = 'succeeded' AND keep_until < coalesce($1::timestamptz, now())`,
    [now],
  );
  return rowCount ?? 0;
}

/**
 * Forgets workers silent for ten times their stall timeout that hold no job; their
 * jobs were recovered long before. A worker that comes back re-registers on heartbeat.
 */
export async function pruneWorkers(db: Queryable, schema: string, now: Date | null): Promise<number> {
  const s = quoteSchema(schema);
  const { rowCount } = await db.query(
    `DELETE FROM ${s}.workers w
     WHERE w.last_seen_at < coalesce($1::timestamptz, now()) - 10 * w.stall_timeout_ms * interval '1 millisecond'
       AND NOT EXISTS (SELECT 1 FROM ${s}.jobs j WHERE j.worker_id = w.id AND j.status = 'doing')`,
    [now],
  );
  return rowCount ?? 0;
}
