/** The workers and tasks tables: who is alive, and what each task asks of recovery and defer-by-name. */
import os from 'node:os';
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import type { ResolvedTask } from '../jobs/task.js';

export interface WorkerInfo {
  id: string;
  queues: string[] | null;
  concurrency: number;
  stallTimeoutMs: number;
  /** The tasks this worker runs (operators see which tasks no live worker knows). */
  tasks: string[];
}

/** Inserts or refreshes this worker's row; heartbeat calls it again if the row was pruned. */
export async function registerWorker(
  db: Queryable,
  schema: string,
  worker: WorkerInfo,
  now: Date | null,
): Promise<void> {
  await db.query(
    `INSERT INTO ${quoteSchema(schema)}.workers AS w (id, host, pid, queues, concurrency, stall_timeout_ms, started_at, last_seen_at, tasks)
     VALUES ($1, $2, $3, $4, $5, $6, coalesce($7::timestamptz, now()), coalesce($7::timestamptz, now()), $8)
     ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at, idle = true`,
    [
      worker.id,
      os.hostname(),
      process.pid,
      worker.queues,
      worker.concurrency,
      worker.stallTimeoutMs,
      now,
      worker.tasks,
    ],
  );
}

/**
 * The database's time of the beat, or null when the row is gone (pruned while we were
 * unreachable); and whether any queue has limits (a queue_limits row), which decides how
 * the worker claims (claimLimited.ts): read here, every few seconds, so that a claim never
 * pays to ask. Reply lost: the beat may have landed; the next one says for sure.
 */
export async function heartbeat(
  db: Queryable,
  schema: string,
  workerId: string,
  now: Date | null,
  /** The claims this worker holds, unfinished: those an operator cancelled come back in `cancelled`. */
  running: { id: string; attempt: number }[] = [],
  /**
   * Every job this worker holds (claimed, running, or abandoned with its handler still
   * running): its abandoned_runs rows for any other job are deleted, once older than
   * `sweepAfterMs` (a cancel may land between a claim and its reply). A run whose handler
   * returned while the worker had not heard of its cancel leaves a row that only this frees.
   */
  held: string[] = [],
  sweepAfterMs = 10_000,
): Promise<{ at: Date; cancelled: string[]; limited: boolean } | null> {
  const s = quoteSchema(schema);
  // The cancel poll rides on the beat (no round trip of its own, and none when nothing
  // runs: the subquery over empty arrays reads nothing). It is how a worker without LISTEN
  // (behind a pooler) or one that missed the "<schema>_cancel" NOTIFY learns of a cancel,
  // within a heartbeat interval. Primary-key lookups of the held claims only. Reply
  // lost: the next beat asks again (cancelling a run twice is a no-op). Whether any queue
  // has limits rides on it too: the claim takes the limited path only then. So does the
  // sweep of this worker's abandoned runs (one probe of an empty index, most beats).
  const { rows } = await db.query<{ at: Date; cancelled: string[] | null; limited: boolean }>(
    `WITH swept AS (
       DELETE FROM ${s}.abandoned_runs a
       WHERE a.worker_id = $1 AND NOT (a.job_id = ANY ($5::bigint[]))
         AND a.abandoned_at < now() - $6::int * interval '1 millisecond'
     )
     UPDATE ${s}.workers SET last_seen_at = coalesce($2::timestamptz, now()) WHERE id = $1
     RETURNING last_seen_at AS at,
       (SELECT array_agg(j.id || ':' || j.attempts)
        FROM unnest($3::bigint[], $4::int[]) AS r(id, attempt)
        JOIN ${s}.jobs j ON j.id = r.id AND j.attempts = r.attempt
        WHERE j.status = 'cancelled') AS cancelled,
       EXISTS (SELECT 1 FROM ${s}.queue_limits) AS limited`,
    [
      workerId,
      now,
      running.map((run) => run.id),
      running.map((run) => run.attempt),
      held,
      Math.round(sweepAfterMs),
    ],
  );
  const row = rows[0];
  return row ? { at: row.at, cancelled: row.cancelled ?? [], limited: row.limited } : null;
}

/**
 * Which of these claims are no longer this worker's: not `doing` for it at that attempt —
 * cancelled, or cancelled and retried since (`jobs retry` starts attempts over, so a key
 * alone does not tell the runs apart). For claims whose cancel NOTIFY came before their
 * reply (worker.ts recheckEarlyCancels). Primary-key lookups.
 */
export async function claimsNoLongerHeld(
  db: Queryable,
  schema: string,
  workerId: string,
  claims: { id: string; attempts: number }[],
): Promise<string[]> {
  const { rows } = await db.query<{ gone: string[] | null }>(
    `SELECT array_agg(r.id || ':' || r.attempt) AS gone
     FROM unnest($2::bigint[], $3::int[]) AS r(id, attempt)
     WHERE NOT EXISTS (
       SELECT 1 FROM ${quoteSchema(schema)}.jobs j
       WHERE j.id = r.id AND j.attempts = r.attempt AND j.status = 'doing' AND j.worker_id = $1)`,
    [workerId, claims.map((claim) => claim.id), claims.map((claim) => claim.attempts)],
  );
  return rows[0]?.gone ?? [];
}

/** The worker's row goes, and its abandoned runs with it: their handlers stop with the process. */
export async function unregisterWorker(db: Queryable, schema: string, workerId: string): Promise<void> {
  const s = quoteSchema(schema);
  await db.query(
    `WITH released AS (DELETE FROM ${s}.abandoned_runs WHERE worker_id = $1)
     DELETE FROM ${s}.workers WHERE id = $1`,
    [workerId],
  );
}

/** Publishes the options of the tasks this worker runs, in name order (stable row-lock order). */
export async function registerTasks(db: Queryable, schema: string, tasks: ResolvedTask[]): Promise<void> {
  const sorted = [...tasks].sort((a, b) => a.name.localeCompare(b.name));
  await db.query(
    `INSERT INTO ${quoteSchema(schema)}.tasks AS t (name, queue, priority, max_attempts, on_stall, batch_size, batch_max_wait_ms)
     SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::int[], $7::int[])
     ON CONFLICT (name) DO UPDATE
     SET queue = excluded.queue, priority = excluded.priority, max_attempts = excluded.max_attempts,
         on_stall = excluded.on_stall, batch_size = excluded.batch_size,
         batch_max_wait_ms = excluded.batch_max_wait_ms, updated_at = now()
     WHERE (t.queue, t.priority, t.max_attempts, t.on_stall, t.batch_size, t.batch_max_wait_ms)
       IS DISTINCT FROM (excluded.queue, excluded.priority, excluded.max_attempts, excluded.on_stall,
                         excluded.batch_size, excluded.batch_max_wait_ms)`,
    [
      sorted.map((t) => t.name),
      sorted.map((t) => t.queue),
      sorted.map((t) => t.priority),
      sorted.map((t) => t.maxAttempts),
      sorted.map((t) => t.onStall),
      sorted.map((t) => t.batch?.size ?? null),
      sorted.map((t) => (t.batch ? Math.round(t.batch.maxWaitMs) : null)),
    ],
  );
}

/** Tasks registered (by other workers, other versions) that are not among `known`. */
export async function otherTasks(db: Queryable, schema: string, known: string[]): Promise<string[]> {
  const { rows } = await db.query<{ name: string }>(
    `SELECT name FROM ${quoteSchema(schema)}.tasks WHERE NOT (name = ANY ($1::text[]))`,
    [known],
  );
  return rows.map((row) => row.name);
}

/** Idle workers get a NOTIFY for new jobs; busy ones (last claim came back full) do not need one. */
export async function setWorkerIdle(
  db: Queryable,
  schema: string,
  workerId: string,
  idle: boolean,
): Promise<void> {
  await db.query(
    `UPDATE ${quoteSchema(schema)}.workers SET idle = $2 WHERE id = $1 AND idle IS DISTINCT FROM $2`,
    [workerId, idle],
  );
}
