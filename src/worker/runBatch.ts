/**
 * Runs one batch of a batch task's jobs through its handler (docs/batches.md): builds the
 * jobs' views and the context, enforces the task's timeout for the whole call, and turns
 * what the handler resolved with into one result per job. Like runJob.ts, a handler that
 * throws a non-Error, throws synchronously, returns a malformed result or ignores its
 * signal never takes the worker down.
 */
import type { Logger } from 'pino';
import { JobTimeoutError } from '../errors.js';
import type { ClaimedJob } from '../jobs/claim.js';
import type { BatchContext, BatchJob, BatchOutcome, ResolvedBatch, ResolvedTask } from '../jobs/task.js';

export type BatchRunOutcome =
  /** One result per job, in the batch's order; a failed job carries its error. */
  | { kind: 'settled'; results: BatchOutcome[]; durationMs: number }
  /** The worker is shutting down and aborted the handler, which then gave up: every job goes back. */
  | { kind: 'interrupted' };

function viewOf(job: ClaimedJob): BatchJob {
  return {
    id: job.id,
    task: job.task,
    queue: job.queue,
    args: job.args,
    attempt: job.attempts,
    maxAttempts: job.max_attempts,
    priority: job.priority,
    lock: job.lock,
    queueingLock: job.queueing_lock,
    group: job.group_key,
    runAt: new Date(job.run_at_ms),
    createdAt: new Date(job.created_at_ms),
  };
}

/**
 * What the handler resolved with, as one outcome per job: nothing means all succeeded; an
 * array must have one `{ ok }` per job. Anything else fails every job with an error that
 * says what was expected (the handler's bug must not pass for success).
 */
export function toResults(value: unknown, count: number, task: string): BatchOutcome[] {
  if (value === undefined || value === null) return Array.from({ length: count }, () => ({ ok: true }));
  const malformed = (what: string): BatchOutcome[] => {
    const error = new Error(
      `batch handler of task "${task}" resolved with ${what}: expected nothing (all succeeded) or an array of ${count} outcome(s) { ok: true } | { ok: false, error }, one per job in order`,
    );
    return Array.from({ length: count }, () => ({ ok: false, error }));
  };
  if (!Array.isArray(value)) return malformed(typeof value === 'object' ? 'an object' : `a ${typeof value}`);
  if (value.length !== count) return malformed(`${value.length} outcome(s) for ${count} job(s)`);
  for (const [i, entry] of value.entries()) {
    const ok = (entry as { ok?: unknown } | null)?.ok;
    if (ok !== true && ok !== false) return malformed(`outcome ${i} without ok: true or ok: false`);
  }
  return (value as BatchOutcome[]).map((entry) =>
    entry.ok ? { ok: true } : { ok: false, error: entry.error ?? new Error('batch handler failed the job') },
  );
}

/** One batch being run. `outcome` settles once, and never rejects. */
export class RunningBatch {
  shuttingDown = false;
  settled = false;
  /** Ids of jobs this worker claimed again (they had been recovered away): their outcome here is dropped. */
  readonly superseded = new Set<string>();
  /** Jobs an operator cancelled while the call ran: their abandoned runs go when it returns. */
  readonly cancelled: ClaimedJob[] = [];
  /** The call was given up on at its timeout (its handler may still be running). */
  timedOut = false;
  readonly outcome: Promise<BatchRunOutcome>;
  /** Settles when the handler returns or throws, whatever the outcome was; never rejects. */
  readonly handlerSettled: Promise<void>;
  private readonly controller = new AbortController();

  constructor(
    readonly jobs: ClaimedJob[],
    readonly task: ResolvedTask & { batch: ResolvedBatch },
    log: Logger,
    /** Records the batch's runs in abandoned_runs at its timeout (runJob.ts's holdAbandoned). */
    holdAbandoned: (jobs: ClaimedJob[]) => Promise<void>,
  ) {
    const count = jobs.length;
    const ctx: BatchContext = {
      task: task.name,
      signal: this.controller.signal,
      log: log.child({ task: task.name, jobs: count }),
    };
    const started = performance.now();
    let result: unknown;
    try {
      result = task.batch.handler(jobs.map(viewOf), ctx);
    } catch (error) {
      result = Promise.reject(error);
    }
    const all = (error: unknown): BatchOutcome[] =>
      Array.from({ length: count }, () => ({ ok: false, error }));
    const handled = Promise.resolve(result).then(
      (value): BatchRunOutcome => ({
        kind: 'settled',
        results: toResults(value, count, task.name),
        durationMs: performance.now() - started,
      }),
      (error: unknown): BatchRunOutcome =>
        this.shuttingDown && this.controller.signal.aborted
          ? { kind: 'interrupted' }
          : { kind: 'settled', results: all(error), durationMs: performance.now() - started },
    );
    this.handlerSettled = handled.then(() => {});
    this.outcome =
      task.timeoutMs === null
        ? handled
        : new Promise<BatchRunOutcome>((resolve) => {
            const timeoutMs = task.timeoutMs!;
            const timer = setTimeout(() => {
              this.timedOut = true;
              const error = new JobTimeoutError(timeoutMs);
              this.abort(error);
              const durationMs = performance.now() - started;
              // As for a job: the worker's slot is freed now and a late result is discarded;
              // the batch's slots and locks in the claim stay taken until the call returns.
              void holdAbandoned(jobs).then(() =>
                resolve({ kind: 'settled', results: all(error), durationMs }),
              );
            }, timeoutMs);
            void handled.then((outcome) => {
              clearTimeout(timer);
              if (!this.timedOut) resolve(outcome);
            });
          });
  }

  abort(reason: unknown): void {
    if (!this.controller.signal.aborted) this.controller.abort(reason);
  }
}
