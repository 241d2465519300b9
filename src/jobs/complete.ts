/** Success, in batches: delete (or keep) the rows and count them in task_stats, in one statement. */
import { quoteSchema } from '../db/identifiers.js';
import { runPrepared } from '../db/prepared.js';
import type { Queryable } from '../db/queryable.js';

export interface Completion {
  id: string;
  /** The claim this outcome belongs to (the job's attempt count when claimed): only that claim is settled. */
  attempt: number;
  task: string;
  durationMs: number;
  /** Keep the row as `succeeded` this long; null deletes it. */
  keepForMs: number | null;
  /** The handler's return value as JSON text, stored on a kept row; null or absent stores none. */
  result?: string | null;
}

/**
 * `{"<id>": <result>, ...}` for the kept completions that have a result, or null when none
 * has (no text built per job for tasks that return nothing or keep nothing). Results ride
 * in the completion statement itself (`result = $11 -> id` on kept rows only): no round trip
 * of their own, and a deleted row never looks at one. With results, progress, cancel and
 * the awaited flag in place and unused, `ops/bench/jobs.ts --only outbatch --jobs 10000`
 * (no-op jobs, concurrency 10) gave 9.7k and 15.6k jobs/s against 16.9k and 10.3k before, runs
 * alternated on a shared 2-core host: no difference above its noise.
 */
function resultsById(kept: Completion[]): string | null {
  const pairs: string[] = [];
  for (const c of kept) if (c.result != null) pairs.push(`"${c.id}":${c.result}`);
  return pairs.length === 0 ? null : `{${pairs.join(',')}}`;
}

/**
 * `{"<id>": keep_ms, ...}` for the kept completions: how long each row is kept. Per job,
 * not per task: a task's awaited jobs (deferAndWait) are kept longer than its others, and
 * both may complete in one batch (the per-task keep time used before took the batch's
 * first completion's for all: an awaited row kept 10 s instead of an hour; found by review).
 */
function keepsById(kept: Completion[]): string {
  const pairs: string[] = [];
  for (const c of kept) pairs.push(`"${c.id}":${c.keepForMs}`);
  return `{${pairs.join(',')}}`;
}

/**
 * `{"<id>": attempt, ...}`: the claim check's lookup table. An id twice (a job claimed again
 * while its older claim's outcome waits) keeps the newer claim, the only one the row can hold.
 */
export function attemptsById(claims: { id: string; attempt: number }[]): string {
  // A Map and a hand-built text: an object keyed by numeric ids is a sparse array to V8, and
  // building and stringifying it was the worker's costliest line per job (0.4 µs, run K).
  // Ids are decimal strings (the claim returns id::text): nothing to escape.
  const byId = new Map<string, number>();
  for (const { id, attempt } of claims) byId.set(id, Math.max(attempt, byId.get(id) ?? 0));
  const pairs: string[] = [];
  for (const [id, attempt] of byId) pairs.push(`"${id}":${attempt}`);
  return `{${pairs.join(',')}}`;
}

/** Per-task sums computed here, so the statement joins nothing per job. */
function perTask(completions: Completion[]) {
  const tasks = new Map<string, { sum: number; max: number }>();
  for (const c of completions) {
    const entry = tasks.get(c.task);
    if (entry) {
      entry.sum += c.durationMs;
      entry.max = Math.max(entry.max, c.durationMs);
    } else {
      tasks.set(c.task, { sum: c.durationMs, max: c.durationMs });
    }
  }
  return tasks;
}

/**
 * Only rows still `doing` for this worker **and this claim** (the attempt count it claimed)
 * are touched: a job that recovery took away (the worker looked dead) and gave to another
 * worker — or to this one again — is never completed by the old run's late outcome.
 *
 * Rows are found by primary key only. `status || '' = 'doing'` says `status = 'doing'` in
 * a form the planner cannot match to the partial index `jobs_doing (worker_id) WHERE status
 * = 'doing'`: with statistics taken while few jobs ran (the usual case, and autovacuum's),
 * it estimated one row there and scanned every doing job of the worker, testing each
 * against the batch — 320 ms per batch of 1,000 with 50,000 claimed, and slower completions
 * leave more jobs doing: completions fell 30 s behind on a 100,000-job backlog (run K).
 * Every statement that settles claimed rows by id writes it so (fail.ts, release.ts).
 *
 * The claim check looks each row's attempt up in a JSON object keyed by id (`$9 ->> id`,
 * a binary search of the jsonb's sorted keys): `array_position` over the batch's ids was a
 * linear scan per row, 3-4 ms of a 1,000-job batch. The joins tried before (`(id,
 * attempts) IN (unnest)`, `USING unnest`) went slow once the prepared statement went
 * generic (ops/bench/RESULTS.md runs G and H). Counts come from the rows actually
 * finished; durations are the batch's per-task sums. Stats rows are upserted in task order so
 * concurrent batches never deadlock.
 */
export async function completeJobs(
  db: Queryable,
  schema: string,
  workerId: string,
  completions: Completion[],
  now: Date | null,
): Promise<number> {
  const s = quoteSchema(schema);
  const tasks = perTask(completions);
  const names = [...tasks.keys()];
  const deleted = completions.filter((c) => c.keepForMs === null);
  const kept = completions.filter((c) => c.keepForMs !== null);
  const { rows } = await runPrepared<{ completed: number }>(
    db,
    `outbatch_complete_${schema}`,
    `WITH per_task AS (
       SELECT * FROM unnest($4::text[], $5::float8[], $6::float8[]) AS p(task, sum_ms, max_ms)
     ), deleted AS (
       DELETE FROM ${s}.jobs j
       WHERE j.id = ANY ($1::bigint[]) AND j.worker_id = $2 AND j.status || '' = 'doing'
         AND j.attempts = ($9::jsonb ->> j.id::text)::int
       RETURNING j.task
     ), kept AS (
       UPDATE ${s}.jobs j
       SET status = 'succeeded', worker_id = NULL,
           finished_at = coalesce($3::timestamptz, now()), updated_at = coalesce($3::timestamptz, now()),
           keep_until = coalesce($3::timestamptz, now())
             + ($7::jsonb ->> j.id::text)::float8 * interval '1 millisecond',
           result = $11::jsonb -> j.id::text
       WHERE j.id = ANY ($8::bigint[]) AND j.worker_id = $2 AND j.status || '' = 'doing'
         AND j.attempts = ($10::jsonb ->> j.id::text)::int
       RETURNING j.task
     ), finished AS (
       SELECT task, count(*) AS n FROM (SELECT task FROM deleted UNION ALL SELECT task FROM kept) f GROUP BY task
     ), counted AS (
       INSERT INTO ${s}.task_stats AS t (task, minute, succeeded, duration_ms_sum, duration_ms_max)
       SELECT f.task, date_trunc('minute', coalesce($3::timestamptz, now())), f.n, p.sum_ms, p.max_ms
       FROM finished f JOIN per_task p ON p.task = f.task
       ORDER BY f.task
       ON CONFLICT (task, minute) DO UPDATE
       SET succeeded = t.succeeded + excluded.succeeded,
           duration_ms_sum = t.duration_ms_sum + excluded.duration_ms_sum,
           duration_ms_max = greatest(t.duration_ms_max, excluded.duration_ms_max)
     )
     SELECT coalesce(sum(n), 0)::int AS completed FROM finished`,
    [
      deleted.map((c) => c.id),
      workerId,
      now,
      names,
      names.map((name) => tasks.get(name)!.sum),
      names.map((name) => tasks.get(name)!.max),
      kept.length === 0 ? null : keepsById(kept),
      kept.map((c) => c.id),
      attemptsById(deleted),
      attemptsById(kept),
      resultsById(kept),
    ],
  );
  return rows[0]?.completed ?? 0;
}

/**
 * Success inside the job's own transaction (`ctx.tx`): the row only, not task_stats. The
 * stats row of a task and minute is shared by every completion: upserted here, its lock
 * would be held until the job's COMMIT arrives, and every other transactional completion
 * of that task would queue behind that round trip (seen under chaos:faults: completions
 * waiting 2-15 s on one another). The worker counts the job with `countSucceeded` once the
 * transaction has committed. Same claim rule as completeJobs. Returns whether the row was
 * still this claim's.
 */
export async function completeInTransaction(
  db: Queryable,
  schema: string,
  workerId: string,
  completion: Completion,
  now: Date | null,
  queryTimeoutMs?: number,
): Promise<boolean> {
  const s = quoteSchema(schema);
  const { rows } = await runPrepared<{ completed: number }>(
    db,
    `outbatch_complete_one_${schema}`,
    `WITH deleted AS (
       DELETE FROM ${s}.jobs j
       WHERE j.id = $1 AND j.attempts = $2 AND j.worker_id = $3 AND j.status || '' = 'doing' AND $4::float8 IS NULL
       RETURNING 1
     ), kept AS (
       UPDATE ${s}.jobs j
       SET status = 'succeeded', worker_id = NULL,
           finished_at = coalesce($5::timestamptz, now()), updated_at = coalesce($5::timestamptz, now()),
           keep_until = coalesce($5::timestamptz, now()) + $4::float8 * interval '1 millisecond',
           result = $6::jsonb
       WHERE j.id = $1 AND j.attempts = $2 AND j.worker_id = $3 AND j.status || '' = 'doing' AND $4::float8 IS NOT NULL
       RETURNING 1
     )
     SELECT ((SELECT count(*) FROM deleted) + (SELECT count(*) FROM kept))::int AS completed`,
    [completion.id, completion.attempt, workerId, completion.keepForMs, now, completion.result ?? null],
    { queryTimeoutMs },
  );
  return (rows[0]?.completed ?? 0) > 0;
}

/**
 * Counts completions already written (by completeInTransaction) in task_stats, per task
 * and minute, in task order so concurrent batches never deadlock. Reply lost and sent
 * again: counted twice — these are statistics, and the writer does not resend them.
 */
export async function countSucceeded(
  db: Queryable,
  schema: string,
  completions: Completion[],
  now: Date | null,
): Promise<void> {
  const tasks = perTask(completions);
  const names = [...tasks.keys()].sort();
  const counts = new Map<string, number>();
  for (const c of completions) counts.set(c.task, (counts.get(c.task) ?? 0) + 1);
  await db.query(
    `INSERT INTO ${quoteSchema(schema)}.task_stats AS t (task, minute, succeeded, duration_ms_sum, duration_ms_max)
     SELECT p.task, date_trunc('minute', coalesce($5::timestamptz, now())), p.n, p.sum_ms, p.max_ms
     FROM unnest($1::text[], $2::int[], $3::float8[], $4::float8[]) AS p(task, n, sum_ms, max_ms)
     ORDER BY p.task
     ON CONFLICT (task, minute) DO UPDATE
     SET succeeded = t.succeeded + excluded.succeeded,
         duration_ms_sum = t.duration_ms_sum + excluded.duration_ms_sum,
         duration_ms_max = greatest(t.duration_ms_max, excluded.duration_ms_max)`,
    [
      names,
      names.map((name) => counts.get(name)!),
      names.map((name) => tasks.get(name)!.sum),
      names.map((name) => tasks.get(name)!.max),
      now,
    ],
  );
}
