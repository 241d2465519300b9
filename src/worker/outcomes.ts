/**
 * Writes job outcomes back in batches: completions, failures and shutdown releases
 * pile up while one write is in flight and go out together in the next, so under load
 * one statement covers many jobs and when idle a single job is written at once.
 *
 * A batch is retried while the connection is the trouble (every outcome would fail
 * alike). A batch the server refuses is split until the refused outcome is alone; that
 * one is written again plainer, or recorded as a failure that says it could not be
 * recorded. So one bad outcome never holds the others `doing` under a live worker
 * (which recovery leaves alone), with their locks held.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import { isRetryable, sqlState } from '../db/retryable.js';
import { errorMessage } from '../errors.js';
import type { ClaimedJob } from '../jobs/claim.js';
import { type Completion, completeJobs } from '../jobs/complete.js';
import { type Failure, failJobs, failUnrecordable } from '../jobs/fail.js';
import { type Released, releaseJobs } from '../jobs/release.js';
import { describeError, discardTransaction, type RunningJob, storable } from './runJob.js';

const MAX_BATCH = 1_000;
/** A retryable refusal (deadlock, serialization) repeated this often is treated as a refusal. */
const MAX_RETRYABLE_REFUSALS = 5;

export interface OutcomeWriterDeps {
  /** The worker's control pool: never a connection a handler could be holding. */
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

/**
 * The server answered and said no (not a lost connection, not a server going down): the
 * same statement would be refused again, so retrying it as a whole cannot help.
 */
function refusedByServer(error: unknown): boolean {
  if (!(error instanceof pg.DatabaseError)) return false;
  const code = sqlState(error) ?? '';
  return !code.startsWith('08') && !code.startsWith('57P') && !code.startsWith('53');
}

export function makeOutcomeWriter(deps: OutcomeWriterDeps) {
  const { pool, schema, log, workerId, now, retryIn, onLockFreed, onRetryWritten } = deps;
  // With the job's lock: writing the completion of a job that held one frees it.
  const completions: (Completion & { lock: string | null })[] = [];
  const failures: { failure: Failure; job: ClaimedJob }[] = [];
  const releases: string[] = [];
  const returned: Released = { released: 0, superseded: 0 };
  // Jobs whose outcome is not written yet (counted: a failed in-transaction commit hands
  // its job on to the failure queue before it lets go). Reconciling must leave them alone.
  const unwritten = new Map<string, number>();
  const hold = (id: string) => unwritten.set(id, (unwritten.get(id) ?? 0) + 1);
  const letGo = (id: string) => {
    const left = (unwritten.get(id) ?? 1) - 1;
    if (left > 0) unwritten.set(id, left);
    else unwritten.delete(id);
  };
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

  /**
   * Writes `batch`; on a refusal, halves it until the refused outcome is alone and hands
   * that one to `salvage`. Connection trouble retries the whole batch with backoff (at
   * shutdown three times, then recovery takes the jobs once this worker is gone).
   */
  async function writeBatch<T>(
    what: string,
    batch: T[],
    write: (items: T[]) => Promise<void>,
    salvage: (item: T, error: unknown) => Promise<void>,
  ): Promise<void> {
    let refusals = 0;
    for (let attempt = 1; ; attempt += 1) {
      try {
        await write(batch);
        return;
      } catch (error) {
        const refused =
          refusedByServer(error) && (!isRetryable(error) || ++refusals > MAX_RETRYABLE_REFUSALS);
        if (!refused) {
          if (closing && attempt >= 3) {
            log.error({ err: error }, `${what} failed at shutdown; those jobs will be recovered as dirty`);
            return;
          }
          const waitMs = Math.min(100 * 2 ** attempt, 5_000);
          log.warn({ err: error, retryable: isRetryable(error), waitMs }, `${what} failed; retrying`);
          await new Promise((resolve) => setTimeout(resolve, waitMs));
          continue;
        }
        if (batch.length > 1) {
          const half = Math.ceil(batch.length / 2);
          await writeBatch(what, batch.slice(0, half), write, salvage);
          await writeBatch(what, batch.slice(half), write, salvage);
          return;
        }
        await salvage(batch[0]!, error);
        return;
      }
    }
  }

  /**
   * The last resort for an outcome the server refuses on its own: the job is failed for
   * good with an error saying so, by the plainest statement there is. If even that is
   * refused the job is left to reconciling, which returns it to `todo`.
   */
  async function recordUnrecordable(id: string, task: string, what: string, error: unknown) {
    const reason = storable(`${sqlState(error) ?? 'error'}: ${errorMessage(error)}`, 500);
    const message = `outcome could not be recorded (${what}): ${reason}`;
    try {
      await failUnrecordable(pool, schema, workerId, id, message, now());
      log.error({ jobId: id, task, err: error }, `job failed: its ${what} could not be recorded`);
    } catch (again) {
      log.error(
        { jobId: id, task, err: again },
        `job ${what} could not be recorded, nor the failure saying so; it goes back to todo when the worker reconciles`,
      );
    }
  }

  const writeCompletions = async (batch: typeof completions) => {
    await completeJobs(pool, schema, workerId, batch, now());
  };

  const writeFailures = async (batch: typeof failures) => {
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
      const fields = { jobId: job.id, task: job.task, attempt: job.attempts, error: failure.error.message };
      if (row.status === 'todo') {
        log.warn({ ...fields, retryInMs: failure.retryInMs }, 'job failed; will retry');
        if (failure.retryInMs !== null) onRetryWritten(failure.retryInMs);
      } else if (row.supersededBy)
        log.error({ ...fields, supersededBy: row.supersededBy }, 'job failed; superseded, not retried');
      else log.error({ ...fields, stack: failure.error.stack }, 'job failed for good (dead letter)');
    }
  };

  /** A failure refused alone: once more with a short message and no stack, then the last resort. */
  const salvageFailure = async (item: (typeof failures)[number], error: unknown) => {
    const { failure } = item;
    const plain = { ...failure.error, message: storable(failure.error.message, 200), stack: undefined };
    try {
      await writeFailures([{ ...item, failure: { ...failure, error: plain } }]);
    } catch {
      await recordUnrecordable(failure.id, item.job.task, 'failure', error);
    }
  };

  async function flushAll(): Promise<void> {
    while (completions.length > 0) {
      const batch = completions.splice(0, MAX_BATCH);
      await writeBatch('completing jobs', batch, writeCompletions, (completion, error) =>
        recordUnrecordable(completion.id, completion.task, 'success', error),
      );
      for (const completion of batch) letGo(completion.id);
      if (batch.some((completion) => completion.lock !== null)) onLockFreed();
    }
    while (failures.length > 0) {
      const batch = failures.splice(0, MAX_BATCH);
      await writeBatch('recording job failures', batch, writeFailures, salvageFailure);
      for (const { job } of batch) letGo(job.id);
      if (batch.some(({ job }) => job.lock !== null)) onLockFreed();
    }
    while (releases.length > 0) {
      const batch = releases.splice(0, MAX_BATCH);
      await writeBatch(
        'returning unfinished jobs',
        batch,
        async (ids) => {
          const result = await releaseJobs(pool, schema, workerId, ids);
          returned.released += result.released;
          returned.superseded += result.superseded;
        },
        (id, error) => recordUnrecordable(id, '', 'return to todo', error),
      );
      for (const id of batch) letGo(id);
    }
  }

  /**
   * Commits the handler's own transaction together with the completion, or fails the job.
   * If the job is no longer ours (this worker looked dead — a long GC pause, a frozen VM —
   * and recovery gave the job to another worker), the effects are rolled back: the other
   * run's effects are the ones that count. Found by ops/chaos/kill.ts (SIGSTOP).
   * COMMIT's reply lost: the job is failed as a retry below; if the commit did happen, the
   * failure finds no `doing` row and changes nothing, and the effects stand once.
   */
  async function succeedInTransaction(run: RunningJob, client: pg.PoolClient, durationMs: number) {
    hold(run.job.id);
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
    } finally {
      letGo(run.job.id);
    }
  }

  function fail(job: ClaimedJob, error: unknown, retryInMs: number | null, client?: pg.PoolClient) {
    if (client) void discardTransaction(client);
    const { message, stack } = describeError(error);
    hold(job.id);
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
      hold(run.job.id);
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
      hold(run.job.id);
      releases.push(run.job.id);
      schedule();
    },
    /** Jobs handed to the writer whose outcome is not written yet. */
    unwritten: () => unwritten.keys(),
    /** Writes what is pending and reports how many jobs went back to todo. */
    async close(): Promise<Released> {
      closing = true;
      await Promise.all(inTransaction);
      while (flushing) await flushing;
      return returned;
    },
  };
}
