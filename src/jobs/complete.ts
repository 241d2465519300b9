/** Success, in batches: delete (or keep) the rows and count them in task_stats, in one statement. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { runPrepared } from './defer.js';

export interface Completion {
  id: string;
  durationMs: number;
  /** Keep the row as `succeeded` this long; null deletes it. */
  keepForMs: number | null;
}

/**
 * Only rows still `doing` for this worker are touched: a job that recovery took away
 * (the worker looked dead) and gave to another worker is not completed twice.
 * Stats rows are upserted in task order so concurrent batches never deadlock.
 */
export async function completeJobs(
  db: Queryable,
  schema: string,
  workerId: string,
  completions: Completion[],
  now: Date | null,
): Promise<number> {
  const s = quoteSchema(schema);
  const { rows } = await runPrepared<{ completed: number }>(
    db,
    `outbatch_complete_${schema}`,
    `WITH done AS (
       SELECT * FROM unnest($1::bigint[], $2::float8[], $3::float8[]) AS d(id, ms, keep_ms)
     ), deleted AS (
       DELETE FROM ${s}.jobs j USING done d
       WHERE j.id = d.id AND d.keep_ms IS NULL AND j.status = 'doing' AND j.worker_id = $4
       RETURNING j.task, d.ms
     ), kept AS (
       UPDATE ${s}.jobs j
       SET status = 'succeeded', worker_id = NULL,
           finished_at = coalesce($5::timestamptz, now()), updated_at = coalesce($5::timestamptz, now()),
           keep_until = coalesce($5::timestamptz, now()) + d.keep_ms * interval '1 millisecond'
       FROM done d
       WHERE j.id = d.id AND d.keep_ms IS NOT NULL AND j.status = 'doing' AND j.worker_id = $4
       RETURNING j.task, d.ms
     ), finished AS (
       SELECT * FROM deleted UNION ALL SELECT * FROM kept
     ), counted AS (
       INSERT INTO ${s}.task_stats AS t (task, minute, succeeded, duration_ms_sum, duration_ms_max)
       SELECT task, date_trunc('minute', coalesce($5::timestamptz, now())), count(*), sum(ms), max(ms)
       FROM finished GROUP BY task ORDER BY task
       ON CONFLICT (task, minute) DO UPDATE
       SET succeeded = t.succeeded + excluded.succeeded,
           duration_ms_sum = t.duration_ms_sum + excluded.duration_ms_sum,
           duration_ms_max = greatest(t.duration_ms_max, excluded.duration_ms_max)
     )
     SELECT count(*)::int AS completed FROM finished`,
    [
      completions.map((c) => c.id),
      completions.map((c) => c.durationMs),
      completions.map((c) => c.keepForMs),
      workerId,
      now,
    ],
  );
  return rows[0]?.completed ?? 0;
}
