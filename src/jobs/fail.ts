/** Failure, in batches: schedule the retry or move the job to the dead letter, and count it. */
import { quoteSchema } from '../db/identifiers.js';
import { runPrepared } from '../db/prepared.js';
import type { Queryable } from '../db/queryable.js';

export interface JobError {
  message: string;
  stack?: string;
  attempt: number;
  at: string;
  worker: string;
}

export interface Failure {
  id: string;
  /** The claim this failure belongs to (the job's attempt count when claimed); see completeJobs. */
  attempt: number;
  error: JobError;
  /** Wait before the next attempt; null when the budget is spent or retryOn said no. */
  retryInMs: number | null;
}

export interface FailOutcome {
  id: string;
  task: string;
  status: 'todo' | 'failed';
  supersededBy: string | null;
}

/** A job row keeps the errors of its latest attempts only: a processor run may fail 1,000 times. */
export const ERRORS_KEPT = 20;

/**
 * A retry puts the job back to `todo`. Only one job per queueing lock may be `todo`
 * (unique index), so a job whose queueing lock already has a waiting job fails as
 * superseded by it; and of several jobs in this batch with one queueing lock that would
 * all go back, the newest does and the others are superseded by it. Without the second
 * rule the statement fails on the unique index every time it is tried, and every outcome
 * batched with it waits behind it (issue: two running jobs of one queueing lock failing
 * together).
 *
 * Refused anyway (another worker's retry of the same queueing lock committing meanwhile,
 * a value jsonb cannot hold): the outcome writer splits the batch until the refused
 * failure is alone, and tries it again (it then sees the other job and is superseded) or
 * records a plain failure. Reply lost after the server committed: writing it again
 * changes nothing, since only rows still `doing` for this worker are touched.
 */
export async function failJobs(
  db: Queryable,
  schema: string,
  workerId: string,
  failures: Failure[],
  now: Date | null,
): Promise<FailOutcome[]> {
  const s = quoteSchema(schema);
  const { rows } = await runPrepared<FailOutcome>(
    db,
    `outbatch_fail_${schema}`,
    `WITH input AS (
       SELECT f.id, f.attempt, f.error, f.delay_ms, j.queueing_lock,
              (SELECT t.id FROM ${s}.jobs t
               WHERE t.queueing_lock = j.queueing_lock AND t.status = 'todo' AND t.id <> j.id LIMIT 1) AS waiting
       FROM unnest($1::bigint[], $2::jsonb[], $3::float8[], $7::int[]) AS f(id, error, delay_ms, attempt)
       -- Joined on the primary key only (the status and worker are checked by the UPDATE,
       -- in the form that keeps the planner off the worker's doing rows: see completeJobs).
       JOIN ${s}.jobs j ON j.id = f.id AND j.attempts = f.attempt
     ), ranked AS (
       SELECT i.*,
              CASE WHEN i.delay_ms IS NULL THEN NULL
                   WHEN i.waiting IS NOT NULL THEN i.waiting
                   WHEN i.queueing_lock IS NOT NULL THEN nullif(first_value(i.id) OVER newest_first, i.id)
              END AS superseded_by
       FROM input i
       WINDOW newest_first AS (PARTITION BY i.queueing_lock, i.delay_ms IS NULL ORDER BY i.id DESC)
     ), decided AS (
       SELECT r.*, r.delay_ms IS NOT NULL AND r.superseded_by IS NULL AS retry,
              CASE WHEN r.superseded_by IS NOT NULL
                THEN r.error || jsonb_build_object('supersededBy', r.superseded_by::text,
                  'message', (r.error ->> 'message') || ' (not retried: superseded by job ' || r.superseded_by || ' with the same queueing lock)')
                ELSE r.error END AS final_error
       FROM ranked r
     ), updated AS (
       UPDATE ${s}.jobs j
       SET status = CASE WHEN d.retry THEN 'todo' ELSE 'failed' END,
           run_at = CASE WHEN d.retry
             THEN coalesce($5::timestamptz, now()) + d.delay_ms * interval '1 millisecond' ELSE j.run_at END,
           last_error = d.final_error,
           errors = CASE WHEN jsonb_array_length(j.errors) >= $6 THEN j.errors - 0 ELSE j.errors END
             || jsonb_build_array(d.final_error),
           worker_id = NULL,
           finished_at = CASE WHEN d.retry THEN NULL ELSE coalesce($5::timestamptz, now()) END,
           updated_at = coalesce($5::timestamptz, now())
       FROM decided d
       WHERE j.id = d.id AND j.attempts = d.attempt AND j.worker_id = $4 AND j.status || '' = 'doing'
       RETURNING j.id::text, j.task, j.status, d.superseded_by::text AS "supersededBy"
     ), counted AS (
       INSERT INTO ${s}.task_stats AS t (task, minute, retried, failed)
       SELECT task, date_trunc('minute', coalesce($5::timestamptz, now())),
              count(*) FILTER (WHERE status = 'todo'), count(*) FILTER (WHERE status = 'failed')
       FROM updated GROUP BY task ORDER BY task
       ON CONFLICT (task, minute) DO UPDATE
       SET retried = t.retried + excluded.retried, failed = t.failed + excluded.failed
     )
     SELECT * FROM updated`,
    [
      failures.map((f) => f.id),
      failures.map((f) => JSON.stringify(f.error)),
      failures.map((f) => f.retryInMs),
      workerId,
      now,
      ERRORS_KEPT,
      failures.map((f) => f.attempt),
    ],
  );
  return rows;
}

/**
 * The last resort for an outcome the server refused even alone: the job goes to the dead
 * letter with a plain message saying so, for a human to look at. A plain UPDATE that
 * touches no unique index (`failed` is in neither partial unique index). Only rows still
 * `doing` for this worker.
 */
export async function failUnrecordable(
  db: Queryable,
  schema: string,
  workerId: string,
  id: string,
  attempt: number,
  message: string,
  now: Date | null,
): Promise<boolean> {
  const s = quoteSchema(schema);
  const { rowCount } = await db.query(
    `UPDATE ${s}.jobs j
     SET status = 'failed', worker_id = NULL,
         last_error = jsonb_build_object('message', $3::text, 'unrecorded', true),
         errors = CASE WHEN jsonb_array_length(j.errors) >= $5 THEN j.errors - 0 ELSE j.errors END
           || jsonb_build_array(jsonb_build_object('message', $3::text, 'attempt', j.attempts)),
         finished_at = coalesce($4::timestamptz, now()), updated_at = coalesce($4::timestamptz, now())
     WHERE j.id = $1 AND j.attempts = $6 AND j.worker_id = $2 AND j.status || '' = 'doing'`,
    [id, workerId, message, now, ERRORS_KEPT, attempt],
  );
  return (rowCount ?? 0) > 0;
}
