/**
 * Runs one claimed job's handler: builds its context, enforces the timeout, and reports
 * how it ended. A handler that throws a non-Error, throws synchronously, ignores its
 * signal, or rejects long after its timeout never takes the worker down.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import type { Queryable } from '../db/queryable.js';
import { errorMessage, JobTimeoutError, ValidationError } from '../errors.js';
import type { ClaimedJob } from '../jobs/claim.js';
import { type DeferResult, deferJob } from '../jobs/defer.js';
import type { JobContext, JobInfo, ResolvedTask, Task } from '../jobs/task.js';
import { toJobSpec } from '../jobs/task.js';

export type Outcome =
  | { kind: 'succeeded'; durationMs: number }
  | { kind: 'failed'; error: unknown; durationMs: number }
  /** The worker is shutting down and aborted the handler, which then gave up. */
  | { kind: 'interrupted' };

export interface JobTransaction {
  client: pg.PoolClient;
}

export interface RunJobDeps {
  schema: string;
  pool: pg.Pool;
  log: Logger;
  now: () => Date;
  tasks: ReadonlyMap<string, ResolvedTask>;
}

export interface RunningJob {
  job: ClaimedJob;
  task: ResolvedTask;
  controller: AbortController;
  /** Settles with the outcome; never rejects. */
  outcome: Promise<Outcome>;
  /** The job's own transaction, if the handler opened one (committed with completion). */
  transaction(): pg.PoolClient | undefined;
  shuttingDown: boolean;
}

export class ShutdownAbort extends Error {
  constructor() {
    super('the worker is shutting down');
    this.name = 'ShutdownAbort';
  }
}

export function jobInfo(job: ClaimedJob): JobInfo {
  return {
    id: job.id,
    task: job.task,
    queue: job.queue,
    attempt: job.attempts,
    maxAttempts: job.max_attempts,
    priority: job.priority,
    lock: job.lock,
    queueingLock: job.queueing_lock,
    runAt: job.run_at,
    createdAt: job.created_at,
  };
}

export function startJob(job: ClaimedJob, task: ResolvedTask, deps: RunJobDeps): RunningJob {
  const controller = new AbortController();
  let client: pg.PoolClient | undefined;
  let opening: Promise<pg.PoolClient> | undefined;
  let log: Logger | undefined;

  const openTransaction = () => {
    opening ??= (async () => {
      const connection = await deps.pool.connect();
      try {
        await connection.query('BEGIN');
      } catch (error) {
        connection.release(error as Error);
        throw error;
      }
      client = connection;
      ctx.tx = connection;
      return connection;
    })();
    return opening;
  };

  const ctx: JobContext = {
    job: jobInfo(job),
    signal: controller.signal,
    // A child logger per job costs more than a no-op handler: made on first use.
    get log() {
      log ??= deps.log.child({ task: job.task, jobId: job.id, attempt: job.attempts });
      return log;
    },
    tx: undefined,
    transaction: () => openTransaction() as Promise<Queryable>,
    async defer(name: string | Task, args?: unknown, options = {}): Promise<DeferResult> {
      const taskName = typeof name === 'string' ? name : name?.name;
      const spec = toJobSpec(taskName, args, options, deps.tasks.get(taskName), deps.now);
      // Follow-ups exist iff this job completes: they go through the job's transaction.
      return deferJob(await openTransaction(), deps.schema, spec);
    },
  };

  const running: RunningJob = {
    job,
    task,
    controller,
    shuttingDown: false,
    transaction: () => client,
    outcome: undefined as unknown as Promise<Outcome>,
  };

  const started = performance.now();
  const handled = (async () => {
    if (task.transaction) await openTransaction();
    return task.handler(job.args, ctx);
  })().then(
    (): Outcome => ({ kind: 'succeeded', durationMs: performance.now() - started }),
    (error: unknown): Outcome =>
      running.shuttingDown && controller.signal.aborted
        ? { kind: 'interrupted' }
        : { kind: 'failed', error, durationMs: performance.now() - started },
  );

  if (task.timeoutMs === null) {
    running.outcome = handled;
  } else {
    const timeoutMs = task.timeoutMs;
    running.outcome = new Promise<Outcome>((resolve) => {
      const timer = setTimeout(() => {
        const error = new JobTimeoutError(timeoutMs);
        controller.abort(error);
        // We do not wait for a handler that ignores its signal: the slot is freed now,
        // and whatever it does later is discarded (its transaction is rolled back).
        resolve({ kind: 'failed', error, durationMs: performance.now() - started });
      }, timeoutMs);
      void handled.then((outcome) => {
        clearTimeout(timer);
        resolve(outcome);
      });
    });
  }
  return running;
}

/** Ends the job's own transaction: rolled back, and the connection discarded, unless committed by the caller. */
export async function discardTransaction(client: pg.PoolClient): Promise<void> {
  try {
    await client.query('ROLLBACK');
  } catch {
    // the connection is destroyed below either way
  }
  // Destroyed, not returned: a handler that outlived its timeout may still hold it.
  client.release(true);
}

/** An error as stored in the job row: message and stack, whatever was thrown. */
export function describeError(error: unknown): { message: string; stack?: string } {
  if (error instanceof Error) return { message: error.message || error.name, stack: error.stack };
  if (error === undefined) return { message: 'handler threw undefined' };
  return { message: `handler threw a non-Error: ${errorMessage(error)}` };
}

export function unknownTaskError(name: string, known: Iterable<string>): Error {
  return new ValidationError(
    `unknown task "${name}": no handler is registered in this worker (known: ${[...known].join(', ') || 'none'})`,
  );
}
