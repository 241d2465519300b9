/** Claiming while limits exist: limited queues within their limits, then the others. */
import { quoteSchema } from '../db/identifiers.js';
import { runPrepared } from '../db/prepared.js';
import type { Queryable } from '../db/queryable.js';
import { type ClaimedJob, type ClaimRequest, claimOrder } from './claim.js';

/**
 * The schema's claim_limited_jobs() (schema/032_job_limits.sql says how the limits hold
 * across workers, and how round-robin across groups works). A worker calls it instead of
 * claimJobs while some queue has a queue_limits row (its heartbeat tells it), so a worker
 * pays for limits only while they exist; one round trip either way.
 *
 * Reply lost: as claimJobs, the worker reconciles; rate windows counted the jobs that go
 * back to todo, so they can only be stricter for the rest of the window. Refused: nothing
 * was claimed, no window moved; the worker claims again.
 */
export async function claimLimitedJobs(
  db: Queryable,
  schema: string,
  request: ClaimRequest,
): Promise<ClaimedJob[]> {
  const { rows } = await runPrepared<ClaimedJob>(
    db,
    `outbatch_claim_limited_${schema}`,
    `SELECT * FROM ${quoteSchema(schema)}.claim_limited_jobs($1::text[], $5::text[], $2::int, $3::text, $4::timestamptz)`,
    [request.queues, request.limit, request.workerId, request.now, request.skipTasks],
  );
  return rows.sort(claimOrder);
}
