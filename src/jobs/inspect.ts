/** Operator reads of the queue and its workers, behind control.ts and the dashboard: no writes. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { describeOrigin, type Origin } from '../trace/origin.js';

export const STATES = ['todo', 'scheduled', 'doing', 'dirty', 'failed', 'cancelled', 'succeeded'] as const;
export type JobState = (typeof STATES)[number];

export interface JobSummary {
  id: string;
  task: string;
  queue: string;
  state: JobState;
  priority: number;
  run_at: Date;
  attempts: number;
  max_attempts: number;
  lock: string | null;
  queueing_lock: string | null;
  /** The job's group key within its queue (defer's `group`). */
  group: string | null;
  worker_id: string | null;
  error: string | null;
  created_at: Date;
  updated_at: Date;
}

export interface JobDetail extends JobSummary {
  args: unknown;
  last_error: { message: string; stack?: string } | null;
  errors: unknown[];
  started_at: Date | null;
  finished_at: Date | null;
  keep_until: Date | null;
  /** The latest `ctx.progress` of the job's latest attempt that reported (0-100), its message and when. */
  progress: number | null;
  progress_message: string | null;
  progress_at: Date | null;
  /** The handler's return value, on a row kept after success (keepSucceededFor, or awaited). */
  result: unknown;
  /** A caller waits (or waited) for its outcome: deferAndWait. */
  awaited: boolean;
  /**
   * What caused the job (docs/tracing.md): `{ job }` or `{ processor, events }`, and the
   * W3C `traceparent`/`tracestate` it continues; null when nothing did.
   */
  origin: Origin | null;
  /** The origin in words: "job 12, trace 4bf9…", "events 40-52 (processor totals)"; null without one. */
  caused_by: string | null;
}

export interface ListFilter {
  state?: JobState;
  task?: string;
  queue?: string;
  limit: number;
}

export async function listJobs(db: Queryable, schema: string, filter: ListFilter): Promise<JobSummary[]> {
  const { rows } = await db.query<JobSummary>(
    `SELECT id::text, task, queue, state, priority, run_at, attempts, max_attempts, lock, queueing_lock,
            group_key AS "group", worker_id, last_error ->> 'message' AS error, created_at, updated_at
     FROM ${quoteSchema(schema)}.job_states j
     WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR task = $2) AND ($3::text IS NULL OR queue = $3)
     ORDER BY j.id -- the bigint, not the id::text column of the same name
     LIMIT $4`,
    [filter.state ?? null, filter.task ?? null, filter.queue ?? null, filter.limit],
  );
  return rows;
}

export async function showJob(db: Queryable, schema: string, id: string): Promise<JobDetail | undefined> {
  const s = quoteSchema(schema);
  // origin from jobs itself: job_states keeps the columns jobs had when it was created (schema/035).
  const { rows } = await db.query<Omit<JobDetail, 'caused_by'>>(
    `SELECT id::text, task, queue, state, priority, run_at, attempts, max_attempts, lock, queueing_lock,
            group_key AS "group", worker_id, last_error ->> 'message' AS error, created_at, updated_at,
            args, last_error, errors, started_at, finished_at, keep_until,
            progress, progress_message, progress_at, result, awaited,
            (SELECT o.origin FROM ${s}.jobs o WHERE o.id = js.id) AS origin
     FROM ${s}.job_states js WHERE id = $1`,
    [id],
  );
  const row = rows[0];
  return row && { ...row, caused_by: describeOrigin(row.origin) ?? null };
}

export interface TaskStats {
  task: string;
  /** Jobs in the table now, by derived state. */
  now: Record<JobState, number>;
  /** Over the retained history (task_stats, 30 days by default: the worker option historyRetention). */
  succeeded: number;
  retried: number;
  failed: number;
  avg_duration_ms: number | null;
  max_duration_ms: number | null;
  /** A batch task's batching, as its workers registered it (docs/batches.md); null: run job by job. */
  batch: { size: number; maxWaitMs: number } | null;
}

/** Per task: current groups (one pass over job_states) and history (task_stats). */
export async function jobStats(db: Queryable, schema: string): Promise<TaskStats[]> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<{
    task: string;
    states: Record<string, number> | null;
    succeeded: string | null;
    retried: string | null;
    failed: string | null;
    avg_ms: number | null;
    max_ms: number | null;
    batch_size: number | null;
    batch_max_wait_ms: number | null;
  }>(
    `WITH current AS (
       SELECT task, jsonb_object_agg(state, n) AS states
       FROM (SELECT task, state, count(*)::int AS n FROM ${s}.job_states GROUP BY task, state) c
       GROUP BY task
     ), history AS (
       SELECT task, sum(succeeded) AS succeeded, sum(retried) AS retried, sum(failed) AS failed,
              sum(duration_ms_sum) / nullif(sum(succeeded), 0) AS avg_ms, max(duration_ms_max) AS max_ms
       FROM ${s}.task_stats GROUP BY task
     )
     SELECT coalesce(c.task, h.task) AS task, c.states, h.succeeded::text, h.retried::text, h.failed::text,
            h.avg_ms, h.max_ms, k.batch_size, k.batch_max_wait_ms
     FROM current c FULL JOIN history h ON h.task = c.task
     LEFT JOIN ${s}.tasks k ON k.name = coalesce(c.task, h.task)
     ORDER BY 1`,
  );
  return rows.map((row) => ({
    task: row.task,
    now: Object.fromEntries(STATES.map((state) => [state, row.states?.[state] ?? 0])) as Record<
      JobState,
      number
    >,
    succeeded: Number(row.succeeded ?? 0),
    retried: Number(row.retried ?? 0),
    failed: Number(row.failed ?? 0),
    avg_duration_ms: row.avg_ms === null ? null : Math.round(row.avg_ms * 100) / 100,
    max_duration_ms: row.max_ms === null ? null : Math.round(row.max_ms * 100) / 100,
    batch: row.batch_size === null ? null : { size: row.batch_size, maxWaitMs: row.batch_max_wait_ms ?? 0 },
  }));
}

export interface TaskWithoutWorker {
  task: string;
  /** Due `todo` jobs of the task. */
  waiting: number;
}

/**
 * Per task, the due `todo` jobs that no live worker knows: no worker heartbeating within
 * its own stall timeout lists the task (migration 024). A live worker with NULL tasks is
 * an older build that claims every task, so while one lives nothing is reported and the
 * scan is skipped (the one-time `everything` check). Scheduled jobs are left out: a job
 * due tomorrow is not stuck yet. Otherwise this reads every due todo row (an anti-join
 * against the few known task names), and every scrape pays it: measured 0.8-1.3 s at
 * 500k due jobs on a busy 2-core test host, 5 ms while an older worker lives. No index
 * leads with task for todo rows; one would make this a walk over distinct tasks.
 */
export async function jobsWithoutWorker(db: Queryable, schema: string): Promise<TaskWithoutWorker[]> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<TaskWithoutWorker>(
    `WITH live AS (
       SELECT w.tasks FROM ${s}.workers w
       WHERE ${s}.worker_is_live(w.last_seen_at, w.stall_timeout_ms, now())
     ), known AS (
       SELECT DISTINCT unnest(tasks) AS task FROM live
     )
     SELECT j.task, count(*)::int AS waiting
     FROM ${s}.jobs j
     WHERE j.status = 'todo' AND j.run_at <= now()
       AND NOT EXISTS (SELECT 1 FROM live WHERE live.tasks IS NULL)
       AND NOT EXISTS (SELECT 1 FROM known k WHERE k.task = j.task)
     GROUP BY j.task
     ORDER BY j.task`,
  );
  return rows;
}

/** Workers that heartbeated within their stall timeout (worker_is_live, migration 027). */
export async function countLiveWorkers(db: Queryable, schema: string): Promise<number> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${s}.workers w WHERE ${s}.worker_is_live(w.last_seen_at, w.stall_timeout_ms, now())`,
  );
  return rows[0]?.n ?? 0;
}
