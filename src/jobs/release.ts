/** Jobs a worker holds but will not run go back to `todo`, the attempt not counted: at shutdown, and orphans of a lost claim reply. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { attemptsById } from './complete.js';

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
 * Only rows still `doing` for this worker and these claims (id and attempt count when
 * claimed) are touched, so a reply lost and the statement sent again changes nothing.
 * Refused: the caller isolates it (outcomes.ts); a job left `doing` under a live worker
 * that does not run it is returned by the next reconcile, or recovered once the worker is gone.
 */
export async function releaseJobs(
  db: Queryable,
  schema: string,
  workerId: string,
  jobs: { id: string; attempt: number }[],
): Promise<Released> {
  if (jobs.length === 0) return { released: 0, superseded: 0 };
  const s = quoteSchema(schema);
  const { rows } = await db.query<{ status: string }>(
    `WITH input AS (
       SELECT j.id, j.queueing_lock,
              (SELECT t.id FROM ${s}.jobs t
               WHERE t.queueing_lock = j.queueing_lock AND t.status = 'todo' AND t.id <> j.id LIMIT 1) AS waiting
       FROM ${s}.jobs j
       -- The primary key finds the rows (not the worker's doing rows: see completeJobs);
       -- the claim's attempt is looked up by id as there.
       WHERE j.id = ANY ($1::bigint[]) AND j.attempts = ($3::jsonb ->> j.id::text)::int
         AND j.worker_id = $2 AND j.status || '' = 'doing'
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
    [jobs.map((job) => job.id), workerId, attemptsById(jobs)],
  );
  const superseded = rows.filter((row) => row.status === 'failed').length;
  return { released: rows.length - superseded, superseded };
}

/**
 * Reconciling, step one: the claims `doing` for this worker that it does not hold — a
 * claim committed whose reply never arrived. `held` must list every job the worker has in
 * hand (buffered, running, or with an outcome not yet written), and no claim of this
 * worker may be in flight, or a job about to arrive would be handed to another worker
 * while it runs here. Step two is `releaseJobs` on what this finds. `NOT IN (SELECT
 * unnest(...))` is a hashed lookup; `NOT (id = ANY (...))` scanned the held list for each
 * doing row (200 ms with thousands of each).
 */
export async function findOrphans(
  db: Queryable,
  schema: string,
  workerId: string,
  held: string[],
): Promise<{ id: string; attempt: number }[]> {
  const { rows } = await db.query<{ id: string; attempt: number }>(
    `SELECT id::text, attempts AS attempt FROM ${quoteSchema(schema)}.jobs
     WHERE status = 'doing' AND worker_id = $1 AND id NOT IN (SELECT unnest($2::bigint[]))`,
    [workerId, held],
  );
  return rows;
}
