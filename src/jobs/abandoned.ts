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

type RunOf = Pick<ClaimedJob, 'id' | 'attempts' | 'queue' | 'group_key' | 'lock'>;

/**
 * Records runs abandoned at their timeout (a job, or every job of a batch), before their
 * failure is written: for a moment each counts twice, never zero times. Reply lost: the
 * rows may be there; the worker releases them when the handler returns either way.
 */
export async function holdAbandonedRuns(
  db: Queryable,
  schema: string,
  workerId: string,
  jobs: RunOf[],
): Promise<void> {
  await db.query(
    `INSERT INTO ${quoteSchema(schema)}.abandoned_runs (job_id, attempt, worker_id, queue, group_key, lock)
     SELECT r.job_id, r.attempt, $1, r.queue, r.group_key, r.lock
     FROM unnest($2::bigint[], $3::int[], $4::text[], $5::text[], $6::text[]) AS r(job_id, attempt, queue, group_key, lock)`,
    [
      workerId,
      jobs.map((job) => job.id),
      jobs.map((job) => job.attempts),
      jobs.map((job) => job.queue),
      jobs.map((job) => job.group_key),
      jobs.map((job) => job.lock),
    ],
  );
}

/**
 * Handlers that had been abandoned returned (or a cancel came for a run already over): one
 * row per run goes, so a retried job's two runs with one key (jobs retry starts attempts
 * again) free one slot each.
 */
export async function releaseAbandonedRuns(
  db: Queryable,
  schema: string,
  workerId: string,
  jobs: Pick<ClaimedJob, 'id' | 'attempts'>[],
): Promise<void> {
  const s = quoteSchema(schema);
  await db.query(
    `DELETE FROM ${s}.abandoned_runs a
     WHERE a.id IN (
       SELECT (SELECT b.id FROM ${s}.abandoned_runs b
               WHERE b.worker_id = $1 AND b.job_id = r.job_id AND b.attempt = r.attempt
               ORDER BY b.id LIMIT 1 OFFSET r.n - 1)
       FROM (SELECT r.job_id, r.attempt, row_number() OVER (PARTITION BY r.job_id, r.attempt) AS n
             FROM unnest($2::bigint[], $3::int[]) AS r(job_id, attempt)) r)`,
    [workerId, jobs.map((job) => job.id), jobs.map((job) => job.attempts)],
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
