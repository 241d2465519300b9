/** Shutdown: jobs this worker claimed but did not finish go back to `todo`, attempt not counted. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';

/**
 * As with a retry, a job whose queueing lock has a newer waiting job cannot go back to
 * `todo`; it fails as superseded so neither blocks the other.
 */
export async function releaseJobs(
  db: Queryable,
  schema: string,
  workerId: string,
  ids: string[],
): Promise<{ released: number; superseded: number }> {
  if (ids.length === 0) return { released: 0, superseded: 0 };
  const s = quoteSchema(schema);
  const { rows } = await db.query<{ status: string }>(
    `WITH input AS (
       SELECT j.id,
              (SELECT t.id FROM ${s}.jobs t
               WHERE t.queueing_lock = j.queueing_lock AND t.status = 'todo' AND t.id <> j.id LIMIT 1) AS superseded_by
       FROM ${s}.jobs j
       WHERE j.id = ANY ($1::bigint[]) AND j.status = 'doing' AND j.worker_id = $2
     )
     UPDATE ${s}.jobs j
     SET status = CASE WHEN i.superseded_by IS NULL THEN 'todo' ELSE 'failed' END,
         attempts = CASE WHEN i.superseded_by IS NULL THEN greatest(j.attempts - 1, 0) ELSE j.attempts END,
         last_error = CASE WHEN i.superseded_by IS NULL THEN j.last_error ELSE jsonb_build_object(
           'message', 'worker shut down before the job finished; not requeued: superseded by job ' || i.superseded_by
             || ' with the same queueing lock', 'supersededBy', i.superseded_by::text) END,
         worker_id = NULL, started_at = NULL, updated_at = now()
     FROM input i
     WHERE j.id = i.id
     RETURNING j.status`,
    [ids, workerId],
  );
  const superseded = rows.filter((row) => row.status === 'failed').length;
  return { released: rows.length - superseded, superseded };
}
