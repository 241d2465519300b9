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
  onConflict: OnConflict;
  /** The group key within the queue (docs/limits.md); null: none. */
  group: string | null;
  /** What caused the job (trace/origin.ts), as JSON text; null for most jobs. */
  origin: string | null;
}

/**
 * What a defer does when its queueing lock already has a waiting job: throw
 * AlreadyEnqueued (`error`), return that job's id (`ignore`), or update that job — its args
 * and run time (`replace`: debounce), or its args only (`replace-args`). docs/debounce.md.
 */
export type OnConflict = 'error' | 'ignore' | 'replace' | 'replace-args';
export const ON_CONFLICT_MODES: readonly OnConflict[] = ['error', 'ignore', 'replace', 'replace-args'];

/**
 * An expected outcome, so a value: either a new job, or the waiting one that holds the
 * queueing lock — `replaced: true` when `onConflict: 'replace' | 'replace-args'` updated it.
 */
export type DeferResult =
  | { enqueued: true; id: string }
  | { enqueued: false; existingId: string; replaced?: true };

function toResult(row: { id: string; enqueued: boolean }, onConflict: OnConflict): DeferResult {
  if (row.enqueued) return { enqueued: true, id: row.id };
  // defer_job returns (id, false) for a replace: the waiting job was updated, none added.
  return onConflict === 'replace' || onConflict === 'replace-args'
    ? { enqueued: false, existingId: row.id, replaced: true }
    : { enqueued: false, existingId: row.id };
}

/** The database's "already enqueued" (raised by defer_job with on_conflict 'error') as our typed error. */
export function asAlreadyEnqueued(error: unknown): unknown {
  const e = error as { code?: string; hint?: string; detail?: string };
  if (e?.code === '23505' && e.hint === 'outbatch:already_enqueued' && e.detail) {
    const detail = JSON.parse(e.detail) as { existing_id: string; queueing_lock: string; task?: string };
    return new AlreadyEnqueued(detail.queueing_lock, detail.existing_id, detail.task);
  }
  return error;
}

/**
 * One job through defer_job(). Reply lost after the server did it: the caller sees a
 * connection error and may defer again — without a queueing lock that adds a second job,
 * with 'error' it throws AlreadyEnqueued naming the first, with 'ignore' it returns it, with
 * 'replace' it writes the same args again (the same job while it still waits; a new one if
 * a worker took it in between, so the work runs once more: at-least-once). Refused (a
 * CHECK, AlreadyEnqueued): nothing was written.
 */
export async function deferJob(db: Queryable, schema: string, job: JobSpec): Promise<DeferResult> {
  // A job with an origin takes defer_job_with_origin() (schema/035), which wraps defer_job():
  // a statement of its own, so the untraced one stays exactly as it was. Reply lost: as
  // defer_job, the job exists iff its transaction (the caller's, or the statement's own on
  // the pool) committed, origin included (one insert). Refused (AlreadyEnqueued, or an
  // origin this module never builds): nothing written, and the origin setting is rolled
  // back with the transaction or savepoint (docs/faults.md).
  const traced = job.origin !== null;
  const text = traced
    ? `SELECT id::text, enqueued FROM ${quoteSchema(schema)}.defer_job_with_origin($11::jsonb, $1, $2::jsonb, $3, $4, $5, $6, $7, $8, $9, $10)`
    : `SELECT id::text, enqueued FROM ${quoteSchema(schema)}.defer_job($1, $2::jsonb, $3, $4, $5, $6, $7, $8, $9, $10)`;
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
    job.group,
  ];
  if (traced) values.push(job.origin);
  try {
    const { rows } = await runPrepared<{ id: string; enqueued: boolean }>(
      db,
      traced ? `outbatch_defer_origin_${schema}` : `outbatch_defer_${schema}`,
      text,
      values,
    );
    return toResult(rows[0]!, job.onConflict);
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
  const arrays = `$1::text[], $2::jsonb[], $3::text[], $4::timestamptz[], $5::int[], $6::text[], $7::text[], $8::int[], $9::text[], $10::text[]`;
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
    column('group'),
  ];
  if (origin !== null) values.push(origin);
  try {
    const { rows } = await runPrepared<{ id: string; enqueued: boolean }>(
      db,
      origin === null ? `outbatch_defer_many_${schema}` : `outbatch_defer_many_origin_${schema}`,
      origin === null
        ? `SELECT id::text, enqueued FROM ${quoteSchema(schema)}.defer_jobs(${arrays})`
        : `SELECT id::text, enqueued FROM ${quoteSchema(schema)}.defer_jobs_with_origin($11::jsonb, ${arrays})`,
      values,
    );
    return rows.map((row, i) => toResult(row, jobs[i]!.onConflict));
  } catch (error) {
    throw asAlreadyEnqueued(error);
  }
}
