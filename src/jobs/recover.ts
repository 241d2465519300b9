/** Recovery of dirty jobs: `doing`, but their worker stopped heartbeating. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { ERRORS_KEPT } from './fail.js';

export interface RecoveredJob {
  id: string;
  task: string;
  status: 'todo' | 'failed';
  worker: string | null;
  reason: 'retry' | 'on_stall_fail' | 'attempts_spent' | 'superseded';
}

/**
 * A job is dirty when its worker's row is gone, or silent for longer than the stall
 * timeout that worker declared. Per task (the tasks table, registered by workers):
 * `onStall: 'retry'` puts it back to `todo` (the attempt was counted when it was claimed),
 * `'fail'` sends it to the dead letter, as does a spent budget.
 *
 * Never a deadlock (DESIGN, Jobs): if another job with the same queueing lock is already
 * waiting, this one cannot return to `todo`; it fails as superseded, which frees its
 * lock, and the waiting job runs. SKIP LOCKED lets any number of workers recover at once.
 */
export async function recoverStalledJobs(
  db: Queryable,
  schema: string,
  now: Date | null,
  /** The recovering worker: never its own jobs, which it knows are running (a late heartbeat of its own is not a death). */
  self: string | null = null,
  /**
   * Since when the recovering worker's own heartbeats have succeeded without a break (the
   * database's time); null judges without it (tools, tests). A worker is judged dead only
   * if it stayed silent for its stall timeout *while we were connected*: after an outage
   * longer than the stall timeout every heartbeat is stale, and the first worker back must
   * not take the running jobs of the others, which are alive and reconnecting.
   */
  upSince: Date | null = null,
  /**
   * false leaves jobs with a queueing lock for a later pass. Sending one back to `todo`
   * waits for any transaction that has inserted, and not yet committed, a job with the
   * same queueing lock (the unique index); under a lock_timeout the whole statement then
   * fails, and every other dirty job would wait with it (upkeep.ts retries without them).
   */
  withQueueingLocks = true,
): Promise<RecoveredJob[]> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<RecoveredJob>(
    `WITH stalled AS (
       SELECT j.id, j.worker_id, j.queueing_lock, j.task, j.attempts, j.max_attempts
       FROM ${s}.jobs j
       WHERE j.status = 'doing'
         AND j.worker_id IS DISTINCT FROM $2
         AND ($5::boolean OR j.queueing_lock IS NULL)
         AND NOT EXISTS (
           SELECT 1 FROM ${s}.workers w
           WHERE w.id = j.worker_id
             AND ${s}.worker_is_live(w.last_seen_at, w.stall_timeout_ms, coalesce($1::timestamptz, now())))
         AND ($3::timestamptz IS NULL OR $3::timestamptz <= coalesce($1::timestamptz, now()) - coalesce(
           (SELECT w.stall_timeout_ms FROM ${s}.workers w WHERE w.id = j.worker_id), 0) * interval '1 millisecond')
       FOR UPDATE OF j SKIP LOCKED
     ), judged AS (
       SELECT st.*,
              CASE
                WHEN (SELECT 1 FROM ${s}.jobs t
                      WHERE t.queueing_lock = st.queueing_lock AND t.status = 'todo' AND t.id <> st.id LIMIT 1) IS NOT NULL
                  THEN 'superseded'
                WHEN coalesce((SELECT k.on_stall FROM ${s}.tasks k WHERE k.name = st.task), 'retry') = 'fail'
                  THEN 'on_stall_fail'
                WHEN st.attempts >= st.max_attempts THEN 'attempts_spent'
                ELSE 'retry'
              END AS reason
       FROM stalled st
     ), dirty AS (
       -- Several stalled jobs with one queueing lock cannot all go back to todo (one todo
       -- per queueing lock): the newest does, the others are superseded by it. Without
       -- this the statement would fail on the unique index, every time, and the jobs
       -- would stay doing for good.
       SELECT id, worker_id,
              CASE WHEN reason = 'retry' AND queueing_lock IS NOT NULL
                        AND row_number() OVER (PARTITION BY queueing_lock, reason = 'retry' ORDER BY id DESC) > 1
                   THEN 'superseded' ELSE reason END AS reason
       FROM judged
     ), updated AS (
       UPDATE ${s}.jobs j
       SET status = CASE WHEN d.reason = 'retry' THEN 'todo' ELSE 'failed' END,
           run_at = CASE WHEN d.reason = 'retry' THEN coalesce($1::timestamptz, now()) ELSE j.run_at END,
           last_error = jsonb_build_object(
             'message', 'worker ' || coalesce(d.worker_id, '?') || ' stopped heartbeating while running attempt '
               || j.attempts || CASE d.reason
                 WHEN 'retry' THEN '; retried'
                 WHEN 'on_stall_fail' THEN '; failed (task onStall: fail)'
                 WHEN 'attempts_spent' THEN '; failed (no attempts left)'
                 ELSE '; failed as superseded by a waiting job with the same queueing lock' END,
             'attempt', j.attempts, 'at', coalesce($1::timestamptz, now()), 'stalled', true),
           errors = CASE WHEN jsonb_array_length(j.errors) >= $4 THEN j.errors - 0 ELSE j.errors END
             || jsonb_build_array(jsonb_build_object(
             'message', 'worker stopped heartbeating (' || d.reason || ')',
             'attempt', j.attempts, 'at', coalesce($1::timestamptz, now()), 'worker', d.worker_id)),
           worker_id = NULL,
           finished_at = CASE WHEN d.reason = 'retry' THEN NULL ELSE coalesce($1::timestamptz, now()) END,
           updated_at = coalesce($1::timestamptz, now())
       FROM dirty d
       WHERE j.id = d.id
       RETURNING j.id::text, j.task, j.status, d.worker_id AS worker, d.reason
     ), counted AS (
       INSERT INTO ${s}.task_stats AS t (task, minute, retried, failed)
       SELECT task, date_trunc('minute', coalesce($1::timestamptz, now())),
              count(*) FILTER (WHERE status = 'todo'), count(*) FILTER (WHERE status = 'failed')
       FROM updated GROUP BY task ORDER BY task
       ON CONFLICT (task, minute) DO UPDATE
       SET retried = t.retried + excluded.retried, failed = t.failed + excluded.failed
     )
     SELECT * FROM updated`,
    [now, self, upSince, ERRORS_KEPT, withQueueingLocks],
  );
  return rows;
}
