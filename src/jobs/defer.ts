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
  /** What caused the job (trace/origin.ts), as JSON text; null for most jobs. */
  origin: string | null;
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
  // A job with an origin takes defer_job_with_origin() (schema/035), which wraps defer_job():
  // a statement of its own, so the untraced one stays exactly as it was. Reply lost: as
  // defer_job, the job exists iff its transaction (the caller's, or the statement's own on
  // the pool) committed, origin included (one insert). Refused (AlreadyEnqueued, or an
  // origin this module never builds): nothing written, and the origin setting is rolled
  // back with the transaction or savepoint (docs/faults.md).
  const traced = job.origin !== null;
  const text = traced
    ? `SELECT id::text, enqueued FROM ${quoteSchema(schema)}.defer_job_with_origin($10::jsonb, $1, $2::jsonb, $3, $4, $5, $6, $7, $8, $9)`
    : `SELECT id::text, enqueued FROM ${quoteSchema(schema)}.defer_job($1, $2::jsonb, $3, $4, $5, $6, $7, $8, $9)`;
  const values: unknown[] = [
    job.task,
    job.args,
    job.queue,
    job.runAt,
    job.priority,
    job.lock,
    job.queueingLock,
    job.maxAttempts,
    job.onConflict,
  ];
  if (traced) values.push(job.origin);
  try {
    const { rows } = await runPrepared<{ id: string; enqueued: boolean }>(
      db,
      traced ? `outbatch_defer_origin_${schema}` : `outbatch_defer_${schema}`,
      text,
      values,
    );
    return toResult(rows[0]!);
  } catch (error) {
    throw asAlreadyEnqueued(error);
  }
}

/**
 * Many jobs in one round trip through defer_jobs(): all or none, results in input order.
 * `origin` (JSON text) is the whole batch's: one call has one cause.
 */
export async function deferJobs(
  db: Queryable,
  schema: string,
  jobs: JobSpec[],
  origin: string | null = null,
): Promise<DeferResult[]> {
  if (jobs.length === 0) return [];
  const column = <K extends keyof JobSpec>(key: K) => jobs.map((job) => job[key]);
  const arrays = `$1::text[], $2::jsonb[], $3::text[], $4::timestamptz[], $5::int[], $6::text[], $7::text[], $8::int[], $9::text[]`;
  const values: unknown[] = [
    column('task'),
    column('args'),
    column('queue'),
    column('runAt'),
    column('priority'),
    column('lock'),
    column('queueingLock'),
    column('maxAttempts'),
    column('onConflict'),
  ];
  if (origin !== null) values.push(origin);
  try {
    const { rows } = await runPrepared<{ id: string; enqueued: boolean }>(
      db,
      origin === null ? `outbatch_defer_many_${schema}` : `outbatch_defer_many_origin_${schema}`,
      origin === null
        ? `SELECT id::text, enqueued FROM ${quoteSchema(schema)}.defer_jobs(${arrays})`
        : `SELECT id::text, enqueued FROM ${quoteSchema(schema)}.defer_jobs_with_origin($10::jsonb, ${arrays})`,
      values,
    );
    return rows.map(toResult);
  } catch (error) {
    throw asAlreadyEnqueued(error);
  }
}
