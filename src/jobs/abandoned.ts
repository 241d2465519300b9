/**
 * Abandoned runs (schema/039): a running job cancelled, or past its timeout, whose handler
 * has not returned yet. The job's row has left `doing`, but until the handler returns the
 * run keeps counting against its queue's and its group's concurrency and holds its lock, so
 * a handler that ignores ctx.signal never runs beside the next job of its queue, group or
 * lock. A cancel inserts the row itself (operate.ts); the worker inserts it at a timeout,
 * and deletes it when the handler returns; what is left of a worker that died or stopped
 * goes here too.
 */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import type { ClaimedJob } from './claim.js';

/**
 * Records a run abandoned at its timeout, before its failure is written: for a moment it
 * counts twice, never zero times. Reply lost: the row may be there; the worker deletes it
 * when the handler returns either way.
 */
export async function holdAbandonedRun(
  db: Queryable,
  schema: string,
  workerId: string,
  job: Pick<ClaimedJob, 'id' | 'attempts' | 'queue' | 'group_key' | 'lock'>,
): Promise<void> {
  await db.query(
    `INSERT INTO ${quoteSchema(schema)}.abandoned_runs (job_id, attempt, worker_id, queue, group_key, lock)
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`,
    [job.id, job.attempts, workerId, job.queue, job.group_key, job.lock],
  );
}

/** The handler of an abandoned run returned: its slot and its lock are free. */
export async function releaseAbandonedRun(
  db: Queryable,
  schema: string,
  workerId: string,
  job: Pick<ClaimedJob, 'id' | 'attempts'>,
): Promise<void> {
  await db.query(
    `DELETE FROM ${quoteSchema(schema)}.abandoned_runs WHERE job_id = $1 AND attempt = $2 AND worker_id = $3`,
    [job.id, job.attempts, workerId],
  );
}

/**
 * The abandoned runs of workers judged dead (their handlers died with them), by recovery's
 * rule (recover.ts): silent for their stall timeout, and only while the judging worker's
 * own beats succeeded for that long (`upSince`), so that after an outage the first worker
 * back does not free the slots of others still running their handlers.
 */
export async function releaseDeadWorkersRuns(
  db: Queryable,
  schema: string,
  now: Date | null,
  /** The judging worker: never its own runs. */
  self: string | null = null,
  upSince: Date | null = null,
): Promise<number> {
  const s = quoteSchema(schema);
  const { rowCount } = await db.query(
    `DELETE FROM ${s}.abandoned_runs a
     WHERE a.worker_id IS DISTINCT FROM $3
       AND NOT EXISTS (
         SELECT 1 FROM ${s}.workers w
         WHERE w.id = a.worker_id
           AND ${s}.worker_is_live(w.last_seen_at, w.stall_timeout_ms, coalesce($1::timestamptz, now())))
       AND ($2::timestamptz IS NULL OR $2::timestamptz <= coalesce($1::timestamptz, now()) - coalesce(
         (SELECT w.stall_timeout_ms FROM ${s}.workers w WHERE w.id = a.worker_id), 0) * interval '1 millisecond')`,
    [now, upSince, self],
  );
  return rowCount ?? 0;
}
