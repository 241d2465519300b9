/**
 * Operator actions on jobs (CLI, dashboard): each one statement that changes the rows
 * and writes the audit log together.
 */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';

export interface Actor {
  actor: string;
  host: string;
}

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

/** What a `retry --failed` with this filter would retry, per task (changes nothing). */
export async function previewRetry(db: Queryable, schema: string, filter: FailedFilter) {
  const s = quoteSchema(schema);
  const { rows } = await db.query<{ task: string; count: number }>(
    `SELECT j.task, count(*)::int AS count FROM ${s}.jobs j
     WHERE ${FAILED_MATCH}
       AND NOT EXISTS (SELECT 1 FROM ${s}.jobs q WHERE q.queueing_lock = j.queueing_lock AND q.status = 'todo')
     GROUP BY j.task ORDER BY j.task`,
    filterParams(filter),
  );
  return rows;
}

/**
 * Back to `todo`, due now, with a fresh attempt budget (the error history is kept).
 * A job whose queueing lock already has a waiting job is left alone (it would be a
 * duplicate). Wakes workers with one NOTIFY per queue.
 */
export async function retryJobs(
  db: Queryable,
  schema: string,
  selection: RetrySelection,
  by: Actor,
): Promise<string[]> {
  const s = quoteSchema(schema);
  const byIds = 'ids' in selection;
  const { rows } = await db.query<{ id: string }>(
    `WITH retried AS (
       UPDATE ${s}.jobs j
       SET status = 'todo', run_at = now(), attempts = 0, worker_id = NULL, started_at = NULL,
           finished_at = NULL, keep_until = NULL, updated_at = now()
       WHERE CASE WHEN $5::bigint[] IS NOT NULL
               THEN j.id = ANY ($5::bigint[]) AND j.status IN ('failed', 'cancelled')
               ELSE ${FAILED_MATCH}
             END
         AND NOT EXISTS (
           SELECT 1 FROM ${s}.jobs q WHERE q.queueing_lock = j.queueing_lock AND q.status = 'todo')
       RETURNING j.id, j.task, j.queue
     ), audited AS (
       INSERT INTO ${s}.audit_log (actor, host, action, subject, details)
       SELECT $6, $7, 'jobs.retry', 'job:' || id, jsonb_build_object('task', task) FROM retried
     ), woken AS (
       SELECT pg_notify($8, queue) FROM (SELECT DISTINCT queue FROM retried) q
     )
     SELECT retried.id::text FROM retried, (SELECT count(*) FROM woken) w ORDER BY retried.id`,
    [
      ...filterParams(byIds ? undefined : selection),
      byIds ? selection.ids : null,
      by.actor,
      by.host,
      `${schema}_jobs`,
    ],
  );
  return rows.map((row) => row.id);
}

/** Waiting jobs (todo or scheduled) become `cancelled`; running ones are not touched. */
export async function cancelJobs(db: Queryable, schema: string, ids: string[], by: Actor): Promise<string[]> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<{ id: string }>(
    `WITH cancelled AS (
       UPDATE ${s}.jobs SET status = 'cancelled', finished_at = now(), updated_at = now()
       WHERE id = ANY ($1::bigint[]) AND status = 'todo'
       RETURNING id, task
     ), audited AS (
       INSERT INTO ${s}.audit_log (actor, host, action, subject, details)
       SELECT $2, $3, 'jobs.cancel', 'job:' || id, jsonb_build_object('task', task) FROM cancelled
     )
     SELECT id::text FROM cancelled ORDER BY cancelled.id`,
    [ids, by.actor, by.host],
  );
  return rows.map((row) => row.id);
}

/** Deletes jobs in any state but `doing` (a running job is cancelled by its handler, not from outside). */
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
  const { rows } = await db.query<{ id: string; state: string; holder: string | null }>(
    `SELECT j.id::text, j.state,
            (SELECT q.id::text FROM ${quoteSchema(schema)}.jobs q
             WHERE q.queueing_lock = j.queueing_lock AND q.status = 'todo' AND q.id <> j.id LIMIT 1) AS holder
     FROM ${quoteSchema(schema)}.job_states j WHERE j.id = ANY ($1::bigint[])`,
    [ids],
  );
  const found = new Map(rows.map((row) => [row.id, row]));
  return new Map(
    ids.map((id) => {
      const row = found.get(id);
      if (!row) return [id, 'not found'];
      if (row.holder && (row.state === 'failed' || row.state === 'cancelled')) {
        return [id, `job ${row.holder} with the same queueing lock is already waiting`];
      }
      return [id, `it is ${row.state}`];
    }),
  );
}
