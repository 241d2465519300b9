/** Jobs a worker holds but will not run go back to `todo`, the attempt not counted: at shutdown, and orphans of a lost claim reply. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';

export interface Released {
  released: number;
  superseded: number;
}

/**
 * As with a retry, a job whose queueing lock already has a waiting job cannot go back to
 * `todo`; it fails as superseded so neither blocks the other. Of several released jobs
 * with one queueing lock, the newest goes back and the others are superseded by it (all
 * going back would fail on the unique index, every time).
 *
 * `$1` and `$4` select the jobs to release by id and claim (attempt count when claimed;
 * NULL: all of this worker's); `$3` lists the jobs to keep.
 * Reply lost: writing it again finds the rows no longer `doing` for this worker. Refused:
 * the caller logs it; the jobs stay `doing` under a live worker that does not run them,
 * and the next reconcile pass (or, once the worker stops heartbeating, recovery) takes them.
 */
async function returnToTodo(
  db: Queryable,
  schema: string,
  workerId: string,
  release: { ids: string[]; attempts: number[] } | null,
  keep: string[],
): Promise<Released> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<{ status: string }>(
    `WITH input AS (
       SELECT j.id, j.queueing_lock,
              (SELECT t.id FROM ${s}.jobs t
               WHERE t.queueing_lock = j.queueing_lock AND t.status = 'todo' AND t.id <> j.id LIMIT 1) AS waiting
       FROM ${s}.jobs j
       WHERE j.status = 'doing' AND j.worker_id = $2
         AND ($1::bigint[] IS NULL OR j.id = ANY ($1::bigint[])
           AND (j.id, j.attempts) IN (SELECT * FROM unnest($1::bigint[], $4::int[])))
         AND NOT (j.id = ANY ($3::bigint[]))
       FOR UPDATE OF j
     ), decided AS (
       SELECT i.id,
              coalesce(i.waiting, CASE WHEN i.queueing_lock IS NOT NULL
                THEN nullif(first_value(i.id) OVER (PARTITION BY i.queueing_lock ORDER BY i.id DESC), i.id) END)
                AS superseded_by
       FROM input i
     )
     UPDATE ${s}.jobs j
     SET status = CASE WHEN d.superseded_by IS NULL THEN 'todo' ELSE 'failed' END,
         attempts = CASE WHEN d.superseded_by IS NULL THEN greatest(j.attempts - 1, 0) ELSE j.attempts END,
         last_error = CASE WHEN d.superseded_by IS NULL THEN j.last_error ELSE jsonb_build_object(
           'message', 'not run (worker shut down, or its claim reply was lost); not requeued: superseded by job '
             || d.superseded_by || ' with the same queueing lock', 'supersededBy', d.superseded_by::text) END,
         finished_at = CASE WHEN d.superseded_by IS NULL THEN NULL ELSE now() END,
         worker_id = NULL, started_at = NULL, updated_at = now()
     FROM decided d
     WHERE j.id = d.id
     RETURNING j.status`,
    [release?.ids ?? null, workerId, keep, release?.attempts ?? null],
  );
  const superseded = rows.filter((row) => row.status === 'failed').length;
  return { released: rows.length - superseded, superseded };
}

/** Shutdown: the jobs this worker claimed and did not finish, each with the attempt it was claimed at. */
export async function releaseJobs(
  db: Queryable,
  schema: string,
  workerId: string,
  jobs: { id: string; attempt: number }[],
): Promise<Released> {
  if (jobs.length === 0) return { released: 0, superseded: 0 };
  const release = { ids: jobs.map((job) => job.id), attempts: jobs.map((job) => job.attempt) };
  return returnToTodo(db, schema, workerId, release, []);
}

/**
 * Reconciling: jobs `doing` for this worker that it does not hold — a claim committed
 * whose reply never arrived. `held` must list every job the worker has in hand (buffered,
 * running, or with an outcome not yet written), and no claim of this worker may be in
 * flight, or a job about to arrive would be handed to another worker while it runs here.
 */
export async function releaseOrphans(
  db: Queryable,
  schema: string,
  workerId: string,
  held: string[],
): Promise<Released> {
  return returnToTodo(db, schema, workerId, null, held);
}
