/** Claiming: many due jobs per round trip, each in one worker's hands only. */
import { quoteSchema } from '../db/identifiers.js';
import { runPrepared } from '../db/prepared.js';
import type { Queryable } from '../db/queryable.js';
import type { Origin } from '../trace/origin.js';

export interface ClaimedJob {
  id: string;
  task: string;
  queue: string;
  args: unknown;
  attempts: number;
  max_attempts: number;
  priority: number;
  lock: string | null;
  queueing_lock: string | null;
  /** A caller waits for its outcome (deferAndWait): success keeps the row with the result. */
  awaited: boolean;
  group_key: string | null;
  /** Epoch milliseconds: cheaper to parse than timestamps, and turned into Dates only if a handler asks. */
  run_at_ms: number;
  created_at_ms: number;
  /** What caused the job (schema/035): null for most jobs, costing the claim a null column. */
  origin: Origin | null;
  /** Epoch milliseconds the claim's reply came; set by the worker only with OpenTelemetry (its job span starts there). */
  claimedAtMs?: number;
}

export interface ClaimRequest {
  /** Queues to take from; null takes every queue. */
  queues: string[] | null;
  /**
   * Tasks not to take: those the claiming worker found it cannot run (in a rolling deploy,
   * a newer version's tasks; the worker gives such a job back and skips its task from then
   * on). Usually empty.
   */
  skipTasks: string[];
  limit: number;
  workerId: string;
  /** An injected clock's time; null uses the database's clock (production). */
  now: Date | null;
}

/**
 * Marks up to `limit` due jobs `doing` for this worker, in priority, due-time, creation order.
 *
 * Locks: a job with a lock is taken only if no job with that lock is `doing` and no
 * earlier *due* `todo` job has it — so same-lock jobs start in creation order, and a job
 * scheduled in the future does not hold back its lock. Those checks read every row,
 * including rows another worker is claiming right now (SKIP LOCKED only applies to the
 * rows we lock), so two workers can never take two jobs of one lock; the unique index
 * jobs_lock_doing is the backstop. A run cancelled or past its timeout whose handler has
 * not returned yet (abandoned_runs, schema/039) holds its lock as a `doing` job does.
 *
 * The claim commits without waiting for its WAL flush (synchronous_commit off for this
 * statement's transaction only): a claim lost in a server crash just leaves the job
 * `todo`, to run again — at-least-once either way — and the completion, which does wait,
 * flushes the claim's WAL with its own. Saves a disk flush per claim round trip.
 *
 * The task filter excludes rather than includes. With the tasks a worker knows as `task =
 * ANY ($5)`, the planner, on a jobs table not yet analyzed, estimated one row, sorted the
 * whole backlog and took the first rows: 110 ms per claim at 100,000 queued jobs instead of
 * 9 ms, a third of the throughput at concurrency 1 (ops/bench/RESULTS.md run K). `NOT (task
 * = ANY ($5))` keeps the ordered scan of jobs_claim with no statistics, fresh ones, or ones
 * taken when the queue was nearly empty. The estimate still comes out low with fresh
 * statistics, which JIT compiles for (290 ms): the worker's connections run with JIT off
 * (workerPools.ts).
 *
 * If the reply is lost (the connection dies after the server committed), the jobs are
 * `doing` for a worker that does not know it holds them: the worker reconciles
 * (`findOrphans`, then `releaseJobs`) before its next claim, and periodically. If the server refuses the
 * statement (a lock race on jobs_lock_doing), nothing was claimed; the worker claims again.
 *
 * Limited queues (a queue_limits row: docs/limits.md) are left to claimLimitedJobs, which
 * counts their running jobs under a lock; a worker uses this statement only while its
 * heartbeat says no limit exists. In case that is stale, a picked job of a limited queue is
 * not claimed: the list is read once per statement (an InitPlan over a table that is empty
 * when no limit is set) and checked on the picked rows only, in the UPDATE. In the scan,
 * `NOT (queue = ANY (<list>))` made the planner, which cannot know the list is empty and
 * estimates `<>` against each element by the few distinct queues, expect almost no row to
 * pass: on 1M jobs it chose a sequential scan and an external sort of every todo row
 * instead of the jobs_claim walk (docs/limits.md "What it costs"). Checked after the pick,
 * the scan's plan is the one it was; a stale worker's claim only comes back short. A limit
 * set while this statement runs applies from the next claim.
 *
 * `id = ANY (ARRAY(...))` rather than a join with the CTE: the planner cannot estimate
 * the CTE and picked a hash join over the whole table (5 ms of a 10 ms claim of 500).
 */
export async function claimJobs(db: Queryable, schema: string, request: ClaimRequest): Promise<ClaimedJob[]> {
  const s = quoteSchema(schema);
  const { rows } = await runPrepared<ClaimedJob>(db, `outbatch_claim_${schema}`, claimStatement(s), [
    request.queues,
    request.limit,
    request.workerId,
    request.now,
    request.skipTasks,
  ]);
  return rows.sort(claimOrder);
}

/** The plain claim's statement for a quoted schema (exported for the plan's test). */
export function claimStatement(s: string): string {
  return `WITH picked AS (
      SELECT j.id FROM ${s}.jobs j
      WHERE j.status = 'todo'
        AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
        AND j.run_at <= coalesce($4::timestamptz, now())
        AND ($1::text[] IS NULL OR j.queue = ANY ($1::text[]))
        AND NOT (j.task = ANY ($5::text[]))
        AND (j.lock IS NULL OR (
          NOT EXISTS (SELECT 1 FROM ${s}.jobs d WHERE d.lock = j.lock AND d.status = 'doing')
          AND NOT EXISTS (SELECT 1 FROM ${s}.abandoned_runs a WHERE a.lock = j.lock)
          AND NOT EXISTS (
            SELECT 1 FROM ${s}.jobs e
            WHERE e.lock = j.lock AND e.status = 'todo' AND e.id < j.id
              AND e.run_at <= coalesce($4::timestamptz, now()))))
      ORDER BY j.priority DESC, j.run_at, j.id
      LIMIT $2
      FOR UPDATE SKIP LOCKED
    )
    UPDATE ${s}.jobs j
    SET status = 'doing', attempts = j.attempts + 1, worker_id = $3,
        started_at = coalesce($4::timestamptz, now()), updated_at = coalesce($4::timestamptz, now())
    WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
      AND NOT (j.queue = ANY ((SELECT coalesce(array_agg(l.queue), '{}') FROM ${s}.queue_limits l)::text[]))
    RETURNING j.id::text, j.task, j.queue, j.args, j.attempts, j.max_attempts, j.priority, j.lock,
              j.queueing_lock, j.awaited, j.group_key, (extract(epoch FROM j.run_at) * 1000)::float8 AS run_at_ms,
              (extract(epoch FROM j.created_at) * 1000)::float8 AS created_at_ms, j.origin`;
}

/**
 * UPDATE ... RETURNING does not keep the picked order.
 * Ids are decimal strings: shorter is smaller, same length compares as text.
 */
export function claimOrder(a: ClaimedJob, b: ClaimedJob): number {
  return (
    b.priority - a.priority ||
    a.run_at_ms - b.run_at_ms ||
    a.id.length - b.id.length ||
    (a.id < b.id ? -1 : 1)
  );
}
