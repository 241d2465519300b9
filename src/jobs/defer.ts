/**
 * Enqueueing. Both calls go through the schema's `defer_job()` / `defer_jobs()` functions, so a job deferred
 * from TypeScript, from psql, from another language or from a trigger obeys one set of
 * rules (queueing lock, task defaults, NOTIFY).
 */
import { quoteSchema } from '../db/identifiers.js';
import { runPrepared } from '../db/prepared.js';
import type { Queryable } from '../db/queryable.js';
import { AlreadyEnqueued } from '../errors.js';

/** A job ready for `defer_job()`: already validated. NULLs take the task's registered defaults. */
export interface JobSpec {
  task: string;
  /** JSON text. */
  args: string;
  queue: string | null;
  runAt: Date | null;
  priority: number | null;
  lock: string | null;
  queueingLock: string | null;
  maxAttempts: number | null;
  onConflict: 'error' | 'ignore';
  /** The group key within the queue (docs/limits.md); null: none. */
  group: string | null;
}

/** An expected outcome, so a value: either a new job, or the waiting one that holds the queueing lock. */
export type DeferResult = { enqueued: true; id: string } | { enqueued: false; existingId: string };

function toResult(row: { id: string; enqueued: boolean }): DeferResult {
  return row.enqueued ? { enqueued: true, id: row.id } : { enqueued: false, existingId: row.id };
}

/** The database's "already enqueued" (raised by defer_job with on_conflict 'error') as our typed error. */
export function asAlreadyEnqueued(error: unknown): unknown {
  const e = error as { code?: string; hint?: string; detail?: string };
  if (e?.code === '23505' && e.hint === 'outbatch:already_enqueued' && e.detail) {
    const detail = JSON.parse(e.detail) as { existing_id: string; queueing_lock: string };
    return new AlreadyEnqueued(detail.queueing_lock, detail.existing_id);
  }
  return error;
}

export async function deferJob(db: Queryable, schema: string, job: JobSpec): Promise<DeferResult> {
  const text = `SELECT id::text, enqueued FROM ${quoteSchema(schema)}.defer_job($1, $2::jsonb, $3, $4, $5, $6, $7, $8, $9, $10)`;
  try {
    const { rows } = await runPrepared<{ id: string; enqueued: boolean }>(
      db,
      `outbatch_defer_${schema}`,
      text,
      [
        job.task,
        job.args,
        job.queue,
        job.runAt,
        job.priority,
        job.lock,
        job.queueingLock,
        job.maxAttempts,
        job.onConflict,
        job.group,
      ],
    );
    return toResult(rows[0]!);
  } catch (error) {
    throw asAlreadyEnqueued(error);
  }
}

/** Many jobs in one round trip through defer_jobs(): all or none, results in input order. */
export async function deferJobs(db: Queryable, schema: string, jobs: JobSpec[]): Promise<DeferResult[]> {
  if (jobs.length === 0) return [];
  const column = <K extends keyof JobSpec>(key: K) => jobs.map((job) => job[key]);
  try {
    const { rows } = await runPrepared<{ id: string; enqueued: boolean }>(
      db,
      `outbatch_defer_many_${schema}`,
      `SELECT id::text, enqueued FROM ${quoteSchema(schema)}.defer_jobs(
         $1::text[], $2::jsonb[], $3::text[], $4::timestamptz[], $5::int[], $6::text[], $7::text[], $8::int[], $9::text[],
         $10::text[])`,
      [
        column('task'),
        column('args'),
        column('queue'),
        column('runAt'),
        column('priority'),
        column('lock'),
        column('queueingLock'),
        column('maxAttempts'),
        column('onConflict'),
        column('group'),
      ],
    );
    return rows.map(toResult);
  } catch (error) {
    throw asAlreadyEnqueued(error);
  }
}
