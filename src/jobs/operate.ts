/**
 * Operator writes on jobs (retry, cancel, delete), behind control.ts and the dashboard:
 * each one statement that changes the rows and writes the audit log together.
 */
import type { Actor } from '../audit.js';
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { sqlState } from '../db/retryable.js';

/** Which failed jobs to retry: explicit ids (failed or cancelled), or every failed job matching a filter. */
export type RetrySelection = { ids: string[] } | FailedFilter;

/** Failed jobs by task, error text (case-insensitive substring) and when they failed. */
export interface FailedFilter {
  failed: true;
  task?: string;
  errorContains?: string;
  since?: Date;
  until?: Date;
}

// Shared by the retry and its dry run (parameters $1-$4 in both), so both select the same jobs.
const FAILED_MATCH = `j.status = 'failed' AND ($1::text IS NULL OR j.task = $1)
  AND ($2::timestamptz IS NULL OR j.updated_at >= $2)
  AND ($3::timestamptz IS NULL OR j.updated_at <= $3)
  AND ($4::text IS NULL OR strpos(lower(j.last_error ->> 'message'), lower($4)) > 0)`;

function filterParams(filter: FailedFilter | undefined): unknown[] {
  return [filter?.task ?? null, filter?.since ?? null, filter?.until ?? null, filter?.errorContains ?? null];
}

export interface RetryPreview {
  task: string;
  /** Jobs that would go back to todo. */
  count: number;
  /** Matching jobs that would be left alone: their queueing lock has a waiting job, or a newer match, or a run of theirs has not stopped. */
  skipped: number;
}

/**
 * What a `retry --failed` with this filter would do, per task (changes nothing): the
 * same choice as retryJobs, newest match per queueing lock unless one is already waiting,
 * none whose timed-out run has not stopped.
 */
export async function previewRetry(
  db: Queryable,
  schema: string,
  filter: FailedFilter,
): Promise<RetryPreview[]> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<RetryPreview>(
    `SELECT task, count(*) FILTER (WHERE chosen)::int AS count, count(*) FILTER (WHERE NOT chosen)::int AS skipped
     FROM (
       SELECT j.task,
              (j.queueing_lock IS NULL
               OR (j.id = max(j.id) OVER (PARTITION BY j.queueing_lock)
                   AND NOT EXISTS (SELECT 1 FROM ${s}.jobs q WHERE q.queueing_lock = j.queueing_lock AND q.status = 'todo')))
              AND NOT EXISTS (SELECT 1 FROM ${s}.abandoned_runs a WHERE a.job_id = j.id)
                AS chosen
       FROM ${s}.jobs j
       WHERE ${FAILED_MATCH}
     ) m
     GROUP BY task ORDER BY task`,
    filterParams(filter),
  );
  return rows;
}

export interface RetryOutcome {
  /** Ids put back to todo, in numeric order. */
  retried: string[];
  /** Selected jobs left failed because of their queueing lock, with the reason. */
  skipped: { id: string; reason: string }[];
}

/** SQLSTATE of a unique index refusing a row: here, a second waiting job for one queueing lock. */
const UNIQUE_VIOLATION = '23505';

/**
 * Back to `todo`, due now, with a fresh attempt budget (the error history is kept).
 * Only one job per queueing lock may wait (unique index jobs_queueing_lock_todo), so
 * per lock the newest selected job (highest id: the last one deferred, with the latest
 * args) is retried, the others are reported skipped, and none is retried while a job
 * with that lock already waits. Wakes workers with one NOTIFY per queue.
 *
 * A job whose cancelled or timed-out run is still going (its abandoned_runs row: the
 * handler ignored its signal and has not returned) is skipped with why: a new claim would
 * have the old run's key (`<id>:<attempt>`, attempts start over), and the worker could not
 * tell them apart — both would run, and the old one's outcome could settle the new claim
 * (found by review). The row goes when the handler returns, or its worker is found dead.
 *
 * One statement: all of it or nothing. A job with the same queueing lock deferred by
 * someone else between this statement's snapshot and its update still trips the unique
 * index; the statement then changed nothing and is run again, and sees that job waiting
 * (on a pool; inside a caller's transaction the error aborts it and is passed on).
 */
export async function retryJobs(
  db: Queryable,
  schema: string,
  selection: RetrySelection,
  by: Actor,
): Promise<RetryOutcome> {
  const s = quoteSchema(schema);
  const byIds = 'ids' in selection;
  const statement = () =>
    db.query<{ id: string; reason: string | null }>(
      `WITH selected AS (
         SELECT j.id, j.queueing_lock,
                max(j.id) OVER (PARTITION BY j.queueing_lock) AS newest,
                (SELECT q.id FROM ${s}.jobs q WHERE q.queueing_lock = j.queueing_lock AND q.status = 'todo') AS waiting,
                (SELECT a.worker_id FROM ${s}.abandoned_runs a WHERE a.job_id = j.id LIMIT 1) AS still_on
         FROM ${s}.jobs j
         WHERE CASE WHEN $5::bigint[] IS NOT NULL
                 THEN j.id = ANY ($5::bigint[]) AND j.status IN ('failed', 'cancelled')
                 ELSE ${FAILED_MATCH}
               END
       ), retried AS (
         UPDATE ${s}.jobs j
         SET status = 'todo', run_at = now(), attempts = 0, worker_id = NULL, started_at = NULL,
             finished_at = NULL, keep_until = NULL, updated_at = now()
         FROM selected c
         WHERE j.id = c.id AND c.waiting IS NULL AND (c.queueing_lock IS NULL OR c.id = c.newest)
           AND c.still_on IS NULL
           -- Re-checked on the row's latest version if someone changed it meanwhile.
           AND j.status IN ('failed', 'cancelled')
         RETURNING j.id, j.task, j.queue
       ), audited AS (
         INSERT INTO ${s}.audit_log (actor, host, action, subject, details)
         SELECT $6, $7, 'jobs.retry', 'job:' || id, jsonb_build_object('task', task) FROM retried
       ), woken AS (
         SELECT pg_notify($8, queue) FROM (SELECT DISTINCT queue FROM retried) q
       )
       SELECT o.id::text, o.reason FROM (
         SELECT retried.id, NULL::text AS reason FROM retried, (SELECT count(*) FROM woken) w
         UNION ALL
         SELECT c.id,
                CASE WHEN c.still_on IS NOT NULL
                  THEN format('its cancelled or timed-out run has not stopped yet on worker %s: retry once its handler has returned', c.still_on)
                  WHEN c.waiting IS NOT NULL
                  THEN format('queueing lock "%s" already has a waiting job %s', c.queueing_lock, c.waiting)
                  ELSE format('newer job %s with queueing lock "%s" was retried instead', c.newest, c.queueing_lock)
                END
         FROM selected c
         WHERE c.still_on IS NOT NULL
            OR (c.queueing_lock IS NOT NULL AND (c.waiting IS NOT NULL OR c.id <> c.newest))
       ) o
       ORDER BY o.id`,
      [
        ...filterParams(byIds ? undefined : selection),
        byIds ? selection.ids : null,
        by.actor,
        by.host,
        `${schema}_jobs`,
      ],
    );
  for (let attempt = 1; ; attempt++) {
    try {
      const { rows } = await statement();
      return {
        retried: rows.filter((row) => row.reason === null).map((row) => row.id),
        skipped: rows.flatMap((row) => (row.reason === null ? [] : [{ id: row.id, reason: row.reason }])),
      };
    } catch (error) {
      const raced =
        sqlState(error) === UNIQUE_VIOLATION &&
        (error as { constraint?: unknown }).constraint === 'jobs_queueing_lock_todo';
      // Each race needs a new defer that committed meanwhile: three in a row is not a race.
      if (!raced || attempt >= 3) throw error;
    }
  }
}

/**
 * Waiting (todo, scheduled) and running (doing, dirty) jobs become `cancelled`, in one
 * statement with the audit log. A running job's row changes at once, and keeps its
 * worker_id (which worker ran it): every outcome its run writes later only touches rows
 * still `doing` for that worker and claim, so it changes nothing — the job cannot end
 * `succeeded` (or be retried, or recovered) once this committed. A completion that locked
 * the row first wins: this statement then re-reads the row, finds it no longer `doing`, and
 * leaves it (the id is reported skipped, with its state). The running worker is told with
 * a NOTIFY on "<schema>_cancel", payload "<id>:<attempt>", and aborts the handler's signal
 * and rolls back its ctx.tx; without LISTEN it learns it at its next heartbeat
 * (src/worker/workersTable.ts). Until that handler has returned, the run is in
 * abandoned_runs, inserted here so that no claim sees its slot or its lock free in between:
 * a handler that ignores its signal cannot run beside the next job of its queue, group or lock.
 */
export async function cancelJobs(db: Queryable, schema: string, ids: string[], by: Actor): Promise<string[]> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<{ id: string }>(
    `WITH cancelled AS (
       UPDATE ${s}.jobs SET status = 'cancelled', finished_at = now(), updated_at = now()
       WHERE id = ANY ($1::bigint[]) AND status IN ('todo', 'doing')
       -- A todo row has no worker_id (claims set it, every return to todo clears it).
       RETURNING id, task, attempts, worker_id, queue, group_key, lock
     ), held AS (
       -- The run goes on until its handler returns: it keeps its slot and its lock till then.
       INSERT INTO ${s}.abandoned_runs (job_id, attempt, worker_id, queue, group_key, lock)
       SELECT id, attempts, worker_id, queue, group_key, lock FROM cancelled WHERE worker_id IS NOT NULL
     ), audited AS (
       INSERT INTO ${s}.audit_log (actor, host, action, subject, details)
       SELECT $2, $3, 'jobs.cancel', 'job:' || id,
              jsonb_build_object('task', task) || CASE WHEN worker_id IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('running', true, 'worker', worker_id, 'attempt', attempts) END
       FROM cancelled
     ), told AS (
       SELECT pg_notify($4, id || ':' || attempts) FROM cancelled WHERE worker_id IS NOT NULL
     )
     SELECT id::text FROM cancelled, (SELECT count(*) FROM told) t ORDER BY cancelled.id`,
    [ids, by.actor, by.host, `${schema}_cancel`],
  );
  return rows.map((row) => row.id);
}

/** Deletes jobs in any state but `doing` (cancel a running job first: cancelJobs). */
export async function deleteJobs(db: Queryable, schema: string, ids: string[], by: Actor): Promise<string[]> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<{ id: string }>(
    `WITH deleted AS (
       DELETE FROM ${s}.jobs WHERE id = ANY ($1::bigint[]) AND status <> 'doing'
       RETURNING id, task, status
     ), audited AS (
       INSERT INTO ${s}.audit_log (actor, host, action, subject, details)
       SELECT $2, $3, 'jobs.delete', 'job:' || id, jsonb_build_object('task', task, 'status', status) FROM deleted
     )
     SELECT id::text FROM deleted ORDER BY deleted.id`,
    [ids, by.actor, by.host],
  );
  return rows.map((row) => row.id);
}

/** Why the ids that were asked for were left alone: their current status, or missing. */
export async function explainSkipped(
  db: Queryable,
  schema: string,
  ids: string[],
): Promise<Map<string, string>> {
  if (ids.length === 0) return new Map();
  const { rows } = await db.query<{ id: string; state: string }>(
    `SELECT j.id::text, j.state FROM ${quoteSchema(schema)}.job_states j WHERE j.id = ANY ($1::bigint[])`,
    [ids],
  );
  const found = new Map(rows.map((row) => [row.id, row.state]));
  return new Map(ids.map((id) => [id, found.has(id) ? `it is ${found.get(id)}` : 'not found']));
}
