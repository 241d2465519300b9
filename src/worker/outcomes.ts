/**
 * Writes job outcomes back in batches: completions, failures and shutdown releases
 * pile up while one write is in flight and go out together in the next, so under load
 * one statement covers many jobs and when idle a single job is written at once.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { isRetryable } from '../db/retryable.js';
import type { ClaimedJob } from '../jobs/claim.js';
import { type Completion, completeJobs } from '../jobs/complete.js';
import { type Failure, failJobs } from '../jobs/fail.js';
import { releaseJobs } from '../jobs/release.js';
import { describeError, discardTransaction, type RunningJob } from './runJob.js';

const MAX_BATCH = 1_000;

export interface OutcomeWriterDeps {
  pool: pg.Pool;
  schema: string;
  log: Logger;
  workerId: string;
  now: () => Date | null;
  /** The task's retry decision for a failed attempt: wait in ms, or null for the dead letter. */
  retryIn: (run: RunningJob, error: unknown) => number | null;
  /**
   * Called once an outcome that frees a lock is written: jobs waiting for that lock can be
   * claimed now, and no NOTIFY says so (a processor's next run waits behind its current one).
   */
  onLockFreed: () => void;
  /** Called once a failed attempt is written back as a retry due in `retryInMs`. */
  onRetryWritten: (retryInMs: number) => void;
}

export function makeOutcomeWriter(deps: OutcomeWriterDeps) {
  const { pool, schema, log, workerId, now, retryIn, onLockFreed, onRetryWritten } = deps;
  // With the job's lock: writing the completion of a job that held one frees it.
  const completions: (Completion & { lock: string | null })[] = [];
  const failures: { failure: Failure; job: ClaimedJob }[] = [];
  const releases: string[] = [];
  const returned = { released: 0, superseded: 0 };
  let flushing: Promise<void> | undefined;
  // Jobs completing inside their own transaction (not batched): awaited on close.
  const inTransaction = new Set<Promise<void>>();
  let closing = false;

  const schedule = () => {
    flushing ??= new Promise<void>((resolve) => setImmediate(resolve)).then(flushAll).finally(() => {
      flushing = undefined;
      if (completions.length + failures.length + releases.length > 0) schedule();
    });
  };

  /** Retries a batch until it is written: a job left `doing` by a live worker would never be recovered. */
  async function write(what: string, fn: () => Promise<void>): Promise<void> {
    for (let attempt = 1; ; attempt += 1) {
      try {
        await fn();
        return;
      } catch (error) {
        if (closing && attempt >= 3) {
          log.error({ err: error }, `${what} failed at shutdown; those jobs will be recovered as dirty`);
          return;
        }
        const waitMs = Math.min(100 * 2 ** attempt, 5_000);
        log.warn({ err: error, retryable: isRetryable(error), waitMs }, `${what} failed; retrying`);
        await new Promise((resolve) => setTimeout(resolve, waitMs));
      }
    }
  }

  async function flushAll(): Promise<void> {
    while (completions.length > 0) {
      const batch = completions.splice(0, MAX_BATCH);
      await write('completing jobs', async () => {
        await completeJobs(pool, schema, workerId, batch, now());
      });
      if (batch.some((completion) => completion.lock !== null)) onLockFreed();
    }
    while (failures.length > 0) {
      const batch = failures.splice(0, MAX_BATCH);
      await write('recording job failures', async () => {
        const written = await failJobs(
          pool,
          schema,
          workerId,
          batch.map((f) => f.failure),
          now(),
        );
        const byId = new Map(written.map((row) => [row.id, row]));
        for (const { failure, job } of batch) {
          const row = byId.get(failure.id);
          if (!row) continue; // recovered away from us meanwhile
          const fields = {
            jobId: job.id,
            task: job.task,
            attempt: job.attempts,
            error: failure.error.message,
          };
          if (row.status === 'todo') {
            log.warn({ ...fields, retryInMs: failure.retryInMs }, 'job failed; will retry');
            if (failure.retryInMs !== null) onRetryWritten(failure.retryInMs);
          } else if (row.supersededBy)
            log.error({ ...fields, supersededBy: row.supersededBy }, 'job failed; superseded, not retried');
          else log.error({ ...fields, stack: failure.error.stack }, 'job failed for good (dead letter)');
        }
      });
      if (batch.some(({ job }) => job.lock !== null)) onLockFreed();
    }
    while (releases.length > 0) {
      const batch = releases.splice(0, MAX_BATCH);
      await write('returning unfinished jobs', async () => {
        const result = await releaseJobs(pool, schema, workerId, batch);
        returned.released += result.released;
        returned.superseded += result.superseded;
      });
    }
  }

  /**
   * Commits the handler's own transaction together with the completion, or fails the job.
   * If the job is no longer ours (this worker looked dead — a long GC pause, a frozen VM —
   * and recovery gave the job to another worker), the effects are rolled back: the other
   * run's effects are the ones that count. Found by ops/chaos/kill.ts (SIGSTOP).
   */
  async function succeedInTransaction(run: RunningJob, client: pg.PoolClient, durationMs: number) {
    try {
      const completed = await completeJobs(
        client,
        schema,
        workerId,
        [{ id: run.job.id, task: run.job.task, durationMs, keepForMs: run.task.keepSucceededForMs }],
        now(),
      );
      if (completed === 0) {
        await discardTransaction(client);
        log.warn(
          { jobId: run.job.id, task: run.job.task, attempt: run.job.attempts },
          'job was recovered away from this worker (it looked dead) while running: its transaction is rolled back',
        );
        return;
      }
      await client.query('COMMIT');
      client.release();
      if (run.job.lock !== null) onLockFreed();
    } catch (error) {
      // The COMMIT (or the completion inside it) failed, e.g. the connection died in a
      // server restart: a failed attempt like any other, retried per the task's policy,
      // not straight to the dead letter (found by ops/chaos/restart.ts).
      await discardTransaction(client);
      fail(run.job, error, retryIn(run, error));
    }
  }

  function fail(job: ClaimedJob, error: unknown, retryInMs: number | null, client?: pg.PoolClient) {
    if (client) void discardTransaction(client);
    const { message, stack } = describeError(error);
    failures.push({
      job,
      failure: {
        id: job.id,
        retryInMs,
        error: { message, stack, attempt: job.attempts, at: new Date().toISOString(), worker: workerId },
      },
    });
    schedule();
  }

  return {
    succeed(run: RunningJob, durationMs: number) {
      const client = run.takeTransaction();
      if (client) {
        const committing = succeedInTransaction(run, client, durationMs).finally(() =>
          inTransaction.delete(committing),
        );
        inTransaction.add(committing);
        return;
      }
      completions.push({
        id: run.job.id,
        lock: run.job.lock,
        task: run.job.task,
        durationMs,
        keepForMs: run.task.keepSucceededForMs,
      });
      schedule();
    },
    fail,
    release(run: RunningJob) {
      const client = run.takeTransaction();
      if (client) void discardTransaction(client);
      releases.push(run.job.id);
      schedule();
    },
    /** Writes what is pending and reports how many jobs went back to todo. */
    async close(): Promise<{ released: number; superseded: number }> {
      closing = true;
      await Promise.all(inTransaction);
      while (flushing) await flushing;
      return returned;
    },
  };
}
