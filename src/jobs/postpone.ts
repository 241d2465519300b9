/** A handler's RateLimited: the job back to todo at its retry time, its queue or group paused. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { attemptsById } from './complete.js';

export interface Postponement {
  id: string;
  /** The claim (the attempt count when claimed): only that claim is settled. */
  attempt: number;
  /** Epoch ms: the job's new run_at, and the end of its queue's (or group's) pause. */
  retryAt: number;
}

/**
 * Through the schema's postpone_jobs() (schema/032_job_limits.sql): one statement for the
 * jobs, the queue pauses and the group pauses. Returns the jobs settled and how: `todo`,
 * or `failed` when a waiting job holds its queueing lock (superseded, as a release).
 *
 * Reply lost: sent again, it touches no row (only rows still `doing` for this claim) and
 * the pauses are set to the same times. Refused: the outcome writer isolates it and records
 * a failure saying so.
 */
export async function postponeJobs(
  db: Queryable,
  schema: string,
  workerId: string,
  jobs: Postponement[],
): Promise<{ id: string; status: 'todo' | 'failed' }[]> {
  if (jobs.length === 0) return [];
  const until = new Map<string, number>();
  for (const job of jobs) until.set(job.id, Math.max(job.retryAt, until.get(job.id) ?? 0));
  const { rows } = await db.query<{ id: string; status: 'todo' | 'failed' }>(
    `SELECT id, status FROM ${quoteSchema(schema)}.postpone_jobs($1::jsonb, $2::jsonb, $3)`,
    [attemptsById(jobs), JSON.stringify(Object.fromEntries(until)), workerId],
  );
  return rows;
}
