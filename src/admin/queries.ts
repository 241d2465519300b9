/**
 * The dashboard's reads (jobs, workers, throughput, the events' head, the oldest open
 * transaction), built to stay fast with millions of rows:
 * counts read at most `COUNT_CAP` rows per stored status through its partial index and
 * scale up from the planner's statistics past that; lists are keyset pages by id.
 */
import type { Queryable } from '../db/queryable.js';
import type { JobState } from '../jobs/inspect.js';
import type { Origin } from '../trace/origin.js';

/** Rows read per stored status when counting; beyond it the counts are estimates. */
export const COUNT_CAP = 5_000;

/** The stored status a derived state lives in: lets the list query use that status' index. */
export const STORED_STATUS: Record<JobState, string> = {
  todo: 'todo',
  scheduled: 'todo',
  doing: 'doing',
  dirty: 'doing',
  failed: 'failed',
  cancelled: 'cancelled',
  succeeded: 'succeeded',
};

export interface JobCount {
  state: JobState;
  queue: string;
  task: string;
  count: number;
  /** True when the group was scaled from a sample (its status has more than COUNT_CAP rows). */
  estimated: boolean;
}

interface CountRow {
  status: string;
  state: JobState;
  queue: string;
  task: string;
  n: number;
  sampled: number;
  status_estimate: number | null;
}

/**
 * Each stored status contributes at most COUNT_CAP rows (a LIMITed scan of its partial
 * index), grouped by derived state, queue and task. A status that filled its cap is
 * scaled to the planner's estimate of its size (pg_stats most-common-value frequency ×
 * pg_class.reltuples), so a million todo jobs cost the same as ten thousand.
 */
export async function countJobs(db: Queryable, q: string, schema: string): Promise<JobCount[]> {
  const { rows } = await db.query<CountRow>(
    `WITH alive AS (
       SELECT id FROM ${q}.workers
       WHERE ${q}.worker_is_live(last_seen_at, stall_timeout_ms, now())
     ), sample AS (
       (SELECT 'todo' AS status, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'todo' END AS state, queue, task
        FROM ${q}.jobs WHERE status = 'todo' LIMIT $1)
       UNION ALL
       (SELECT 'doing', CASE WHEN worker_id IN (SELECT id FROM alive) THEN 'doing' ELSE 'dirty' END, queue, task
        FROM ${q}.jobs WHERE status = 'doing' LIMIT $1)
       UNION ALL
       (SELECT 'failed', 'failed', queue, task FROM ${q}.jobs WHERE status = 'failed' LIMIT $1)
       UNION ALL
       (SELECT 'cancelled', 'cancelled', queue, task FROM ${q}.jobs WHERE status = 'cancelled' LIMIT $1)
       UNION ALL
       (SELECT 'succeeded', 'succeeded', queue, task FROM ${q}.jobs WHERE status = 'succeeded' LIMIT $1)
     ), stats AS (
       SELECT v.status, v.freq * greatest(c.reltuples, 0) AS estimate
       FROM pg_stats s
       JOIN pg_class c ON c.oid = to_regclass(quote_ident($2) || '.jobs')
       CROSS JOIN LATERAL unnest(s.most_common_vals::text::text[], s.most_common_freqs) AS v(status, freq)
       WHERE s.schemaname = $2 AND s.tablename = 'jobs' AND s.attname = 'status'
     ), grouped AS (
       SELECT status, state, queue, task, count(*)::int AS n,
              sum(count(*)) OVER (PARTITION BY status)::int AS sampled
       FROM sample GROUP BY status, state, queue, task
     )
     SELECT g.*, st.estimate::float8 AS status_estimate
     FROM grouped g LEFT JOIN stats st ON st.status = g.status
     ORDER BY g.queue, g.task, g.state`,
    [COUNT_CAP, schema],
  );
  return rows.map((row) => {
    const capped = row.sampled >= COUNT_CAP;
    // Without statistics (never analyzed) a capped status is reported as its sample: a floor.
    const scale = capped && row.status_estimate ? Math.max(1, row.status_estimate / row.sampled) : 1;
    return {
      state: row.state,
      queue: row.queue,
      task: row.task,
      count: Math.round(row.n * scale),
      estimated: capped,
    };
  });
}

export interface BatchTaskRow {
  task: string;
  size: number;
  maxWaitMs: number;
}

/** The batch tasks (docs/batches.md) and their batching, as workers registered them: a few rows. */
export async function listBatchTasks(db: Queryable, q: string): Promise<BatchTaskRow[]> {
  const { rows } = await db.query<BatchTaskRow>(
    `SELECT name AS task, batch_size AS size, batch_max_wait_ms AS "maxWaitMs"
     FROM ${q}.tasks WHERE batch_size IS NOT NULL ORDER BY name`,
  );
  return rows;
}

export interface JobRow {
  id: string;
  task: string;
  queue: string;
  state: JobState;
  priority: number;
  attempts: number;
  max_attempts: number;
  run_at: Date;
  created_at: Date;
  updated_at: Date;
  worker_id: string | null;
  lock: string | null;
  /** The job's group key within its queue (docs/limits.md). */
  group: string | null;
  error: string | null;
  stack: string | null;
  age_seconds: number;
  /** ctx.progress (0-100) and its message, or null. */
  progress: number | null;
  progress_message: string | null;
  /** What caused the job (schema/035); the API adds it in words as `caused_by`. */
  origin: Origin | null;
}

export interface JobPageQuery {
  state: JobState;
  queue?: string;
  task?: string;
  /** Keyset: only ids below this one (newest first). */
  before?: string;
  limit: number;
}

/**
 * Newest first, one keyset page. Reads the table, not the job_states view: filtering on
 * the view's CASE leaves the planner guessing 0.5% of rows, so it sorted every failed
 * job (and JIT-compiled the plan: 700 ms at 1M jobs). Here the derived state is spelled
 * as predicates it can estimate (the CASE on $2 folds away when planning with the
 * values), so a page is a short backward walk of the primary key or the status' index.
 */
export async function listJobPage(db: Queryable, q: string, query: JobPageQuery): Promise<JobRow[]> {
  const { rows } = await db.query<JobRow>(
    `SELECT j.id::text, j.task, j.queue, $2::text AS state, j.priority, j.attempts, j.max_attempts, j.run_at,
            j.created_at, j.updated_at, j.worker_id, j.lock, j.group_key AS "group", j.last_error ->> 'message' AS error,
            left(j.last_error ->> 'stack', 4000) AS stack, j.progress, j.progress_message,
            extract(epoch FROM now() - j.created_at)::float8 AS age_seconds, j.origin
     FROM ${q}.jobs j
     WHERE j.status = $1
       AND CASE $2 WHEN 'todo' THEN j.run_at <= now() WHEN 'scheduled' THEN j.run_at > now() ELSE true END
       AND CASE $2
             WHEN 'doing' THEN EXISTS (SELECT 1 FROM ${q}.workers w WHERE w.id = j.worker_id
                                       AND ${q}.worker_is_live(w.last_seen_at, w.stall_timeout_ms, now()))
             WHEN 'dirty' THEN NOT EXISTS (SELECT 1 FROM ${q}.workers w WHERE w.id = j.worker_id
                                           AND ${q}.worker_is_live(w.last_seen_at, w.stall_timeout_ms, now()))
             ELSE true END
       AND ($3::text IS NULL OR j.queue = $3) AND ($4::text IS NULL OR j.task = $4)
       AND ($5::bigint IS NULL OR j.id < $5)
     ORDER BY j.id DESC
     LIMIT $6`,
    [
      STORED_STATUS[query.state],
      query.state,
      query.queue ?? null,
      query.task ?? null,
      query.before ?? null,
      query.limit,
    ],
  );
  return rows;
}

export interface WorkerRow {
  id: string;
  host: string;
  pid: number;
  queues: string[] | null;
  concurrency: number;
  started_at: Date;
  last_seen_at: Date;
  heartbeat_age_seconds: number;
  alive: boolean;
  running: number;
}

/** Every registered worker with its heartbeat age; `running` counts its doing jobs (jobs_doing index). */
export async function listWorkers(db: Queryable, q: string): Promise<WorkerRow[]> {
  const { rows } = await db.query<WorkerRow>(
    `SELECT w.id, w.host, w.pid, w.queues, w.concurrency, w.started_at, w.last_seen_at,
            extract(epoch FROM now() - w.last_seen_at)::float8 AS heartbeat_age_seconds,
            ${q}.worker_is_live(w.last_seen_at, w.stall_timeout_ms, now()) AS alive,
            (SELECT count(*)::int FROM ${q}.jobs j WHERE j.status = 'doing' AND j.worker_id = w.id) AS running
     FROM ${q}.workers w
     ORDER BY w.started_at, w.id`,
  );
  return rows;
}

export interface ThroughputRow {
  minute: Date;
  succeeded: number;
  retried: number;
  failed: number;
  avg_duration_ms: number | null;
}

/** Outcomes per minute over the last `minutes` (task_stats rows: a few per task and minute). */
export async function throughput(db: Queryable, q: string, minutes: number): Promise<ThroughputRow[]> {
  const { rows } = await db.query<ThroughputRow>(
    `SELECT m.minute, coalesce(sum(t.succeeded), 0)::float8 AS succeeded,
            coalesce(sum(t.retried), 0)::float8 AS retried, coalesce(sum(t.failed), 0)::float8 AS failed,
            (sum(t.duration_ms_sum) / nullif(sum(t.succeeded), 0))::float8 AS avg_duration_ms
     FROM generate_series(date_trunc('minute', now()) - ($1::int - 1) * interval '1 minute',
                          date_trunc('minute', now()), interval '1 minute') AS m(minute)
     LEFT JOIN ${q}.task_stats t ON t.minute = m.minute
     GROUP BY m.minute
     ORDER BY m.minute`,
    [minutes],
  );
  return rows;
}

export interface OldestTransaction {
  kind: 'session' | 'prepared';
  pid: number | null;
  database: string | null;
  user: string | null;
  application: string | null;
  state: string | null;
  started_at: Date;
  age_seconds: number;
  query: string | null;
}

/**
 * The oldest transaction that holds a transaction id, cluster-wide: only those hold back
 * `pg_snapshot_xmin`, hence gap-safe reads. Prepared (two-phase) transactions count too
 * and are easy to forget. Without pg_read_all_stats, other roles' sessions hide their details.
 */
export async function oldestTransaction(db: Queryable): Promise<OldestTransaction | null> {
  const { rows } = await db.query<OldestTransaction>(
    `SELECT * FROM (
       SELECT 'session' AS kind, pid, datname AS database, usename AS "user", application_name AS application,
              state, xact_start AS started_at, extract(epoch FROM now() - xact_start)::float8 AS age_seconds,
              left(query, 500) AS query
       FROM pg_stat_activity
       WHERE backend_xid IS NOT NULL AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
       UNION ALL
       SELECT 'prepared', NULL, database, owner, NULL, 'prepared ' || gid, prepared,
              extract(epoch FROM now() - prepared)::float8, NULL
       FROM pg_prepared_xacts
     ) t
     ORDER BY started_at
     LIMIT 1`,
  );
  return rows[0] ?? null;
}

/**
 * The newest event position, committed or not yet visible to gap-safe readers: what
 * "events appended" counts. (The gap-safe head can stand still behind a long transaction.)
 */
export async function lastEventPosition(db: Queryable, q: string): Promise<bigint> {
  const { rows } = await db.query<{ position: string | null }>(
    `SELECT max(position)::text AS position FROM ${q}.events`,
  );
  return BigInt(rows[0]?.position ?? 0);
}
