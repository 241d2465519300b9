/** Failure, in batches: schedule the retry or move the job to the dead letter, and count it. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { runPrepared } from './defer.js';

export interface JobError {
  message: string;
  stack?: string;
  attempt: number;
  at: string;
  worker: string;
}

export interface Failure {
  id: string;
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

/**
 * A retry puts the job back to `todo`. If another job with the same queueing lock is
 * already waiting, the two cannot both be `todo` (unique index): the waiting one is the
 * newer request, so this one fails as superseded instead of blocking either.
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
       SELECT f.id, f.error, f.delay_ms,
              (SELECT t.id FROM ${s}.jobs t
               WHERE t.queueing_lock = j.queueing_lock AND t.status = 'todo' AND t.id <> j.id LIMIT 1) AS superseded_by
       FROM unnest($1::bigint[], $2::jsonb[], $3::float8[]) AS f(id, error, delay_ms)
       JOIN ${s}.jobs j ON j.id = f.id
     ), decided AS (
       SELECT i.*, i.delay_ms IS NOT NULL AND i.superseded_by IS NULL AS retry,
              CASE WHEN i.delay_ms IS NOT NULL AND i.superseded_by IS NOT NULL
                THEN i.error || jsonb_build_object('supersededBy', i.superseded_by::text,
                  'message', (i.error ->> 'message') || ' (not retried: superseded by job ' || i.superseded_by || ' with the same queueing lock)')
                ELSE i.error END AS final_error
       FROM input i
     ), updated AS (
       UPDATE ${s}.jobs j
       SET status = CASE WHEN d.retry THEN 'todo' ELSE 'failed' END,
           run_at = CASE WHEN d.retry
             THEN coalesce($5::timestamptz, now()) + d.delay_ms * interval '1 millisecond' ELSE j.run_at END,
           last_error = d.final_error,
           errors = j.errors || jsonb_build_array(d.final_error),
           worker_id = NULL,
           finished_at = CASE WHEN d.retry THEN NULL ELSE coalesce($5::timestamptz, now()) END,
           updated_at = coalesce($5::timestamptz, now())
       FROM decided d
       WHERE j.id = d.id AND j.status = 'doing' AND j.worker_id = $4
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
    ],
  );
  return rows;
}
