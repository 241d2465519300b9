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
import type pg from 'pg';
import type { Logger } from 'pino';
import { withDeadline } from '../db/deadline.js';
import { failureKind, LOCK_NOT_AVAILABLE, sqlState } from '../db/retryable.js';
import { errorMessage } from '../errors.js';
import type { ClaimedJob } from '../jobs/claim.js';
import { type Completion, completeInTransaction, completeJobs, countSucceeded } from '../jobs/complete.js';
import { type Failure, failJobs, failUnrecordable } from '../jobs/fail.js';
import { type Postponement, postponeJobs } from '../jobs/postpone.js';
import { type Released, releaseJobs } from '../jobs/release.js';
import type { ResolvedTask } from '../jobs/task.js';
import { abandon, discardTransaction, type TransactionEnds } from './jobTransaction.js';
import { describeError, type RunningJob, storable } from './runJob.js';

const MAX_BATCH = 1_000;
/** How many written batches of outcomes endedHere looks through. */
const WRITTEN_KEPT = 8;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** A transient refusal (deadlock, lock timeout, cancel) repeated this often is treated as a refusal (about 20 s of backoff). */
const MAX_TRANSIENT = 8;
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
  /** Called once completions or failures are written: a limited queue may have a free slot. */
  onFinishedWritten: () => void;
  /** Called once a rate-limited job is back in todo, its queue or group paused until `retryAt` (epoch ms). */
  onPostponed: (retryAt: number) => void;
  /** How a job's own transaction is committed with a deadline, or ended without committing. */
  ends: TransactionEnds;
}

export function makeOutcomeWriter(deps: OutcomeWriterDeps) {
  const { pool, schema, log, workerId, now, retryIn, onLockFreed, onRetryWritten, ends } = deps;
  // Rate-limited jobs (RateLimited): back to todo at their retry time, uncounted.
  const postponements: (Postponement & { task: string })[] = [];
  // With the job's lock: writing the completion of a job that held one frees it.
  const completions: (Completion & { lock: string | null })[] = [];
  const failures: { failure: Failure; job: ClaimedJob }[] = [];
  const releases: { id: string; attempt: number }[] = [];
  // Completions committed in their own transaction, to be counted in task_stats.
  const committed: Completion[] = [];
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
  let giveUpAt = Number.POSITIVE_INFINITY; // at shutdown: connection trouble is retried until then

  const schedule = () => {
    flushing ??= new Promise<void>((resolve) => setImmediate(resolve)).then(flushAll).finally(() => {
      flushing = undefined;
      if (
        completions.length + failures.length + releases.length + postponements.length + committed.length >
        0
      ) {
        schedule();
      }
    });
  };

  // Outcomes set aside after a transient refusal (a lock wait): retried one at a time, on one
  // control connection, each when its backoff ends. One at a time because each may wait a
  // whole lock_timeout: in parallel they took every control connection and starved the
  // heartbeat (found by review).
  const parked: { at: number; retry: () => Promise<void> }[] = [];
  let parking: Promise<void> | undefined;

  function park(waitMs: number, retry: () => Promise<void>): void {
    parked.push({ at: Date.now() + waitMs, retry });
    parking ??= drainParked().finally(() => {
      parking = undefined;
    });
  }

  async function drainParked(): Promise<void> {
    while (parked.length > 0) {
      if (closing && Date.now() >= giveUpAt) {
        // Still held (never let go), so the shutdown sweep leaves them to recovery, which
        // counts the attempt: their handlers ran.
        log.error(
          { jobs: parked.length },
          'outcomes still waiting at the shutdown deadline; those jobs will be recovered as dirty',
        );
        parked.length = 0;
        return;
      }
      parked.sort((x, y) => x.at - y.at);
      const waitMs = parked[0]!.at - Date.now();
      if (waitMs > 0) {
        await sleep(closing ? Math.min(waitMs, Math.max(giveUpAt - Date.now(), 0)) : waitMs);
        continue;
      }
      await parked
        .shift()!
        .retry()
        .catch((error) => log.error({ err: error }, 'writing a set-aside outcome failed'));
    }
  }

  /**
   * Writes `batch`, then hands it to `done` (the jobs are let go). On a refusal, halves it
   * until the refused outcome is alone and hands that one to `salvage`. Connection trouble
   * retries the whole batch with backoff (at shutdown until the shutdown deadline; then the
   * jobs stay held, and recovery takes them once this worker is gone, counting the attempt).
   * A transient refusal — a lock or statement timeout, a deadlock, a cancel — names rows,
   * not the connection: every outcome of the batch is set aside (`park`) and retried alone
   * with backoff, one at a time, behind the later outcomes rather than in front of them. A
   * job whose failure waits on another transaction's queueing-lock entry (a handler's
   * ctx.defer, uncommitted) waits as long as that transaction lasts; other transient
   * refusals count as refused after MAX_TRANSIENT tries. `inPlace` (salvage's own writes)
   * retries transient refusals where it stands instead, as its caller awaits it.
   */
  async function writeBatch<T>(
    what: string,
    batch: T[],
    write: (items: T[]) => Promise<void>,
    salvage: (item: T, error: unknown) => Promise<void>,
    done: (items: T[]) => void,
    options: { inPlace?: boolean; transient?: number } = {},
  ): Promise<void> {
    let transient = options.transient ?? 0;
    for (let attempt = 1; ; attempt += 1) {
      try {
        await write(batch);
        done(batch);
        return;
      } catch (error) {
        const kind = failureKind(error);
        // A lock wait ends when the other transaction does: retried for as long as it takes
        // (set aside). Other transient refusals count as refused after MAX_TRANSIENT.
        const again =
          kind === 'transient' && (transient < MAX_TRANSIENT || sqlState(error) === LOCK_NOT_AVAILABLE);
        if (kind === 'connection' || (again && options.inPlace)) {
          if (kind === 'transient') transient += 1;
          if (closing && Date.now() >= giveUpAt) {
            log.error({ err: error }, `${what} failed at shutdown; those jobs will be recovered as dirty`);
            return; // not done: still held, see drainParked
          }
          const waitMs = backoff(attempt);
          log.warn({ err: error, waitMs }, `${what} failed; retrying`);
          await sleep(waitMs);
          continue;
        }
        if (again) {
          const waitMs = backoff(transient + 1);
          log.warn(
            { err: error, waitMs, outcomes: batch.length },
            `${what} waits (${sqlState(error) ?? errorMessage(error)}); set aside, retried one by one`,
          );
          for (const item of batch) {
            park(waitMs, () => writeBatch(what, [item], write, salvage, done, { transient: transient + 1 }));
          }
          return;
        }
        if (batch.length > 1) {
          const half = Math.ceil(batch.length / 2);
          const rest = { ...options, transient: 0 };
          await writeBatch(what, batch.slice(0, half), write, salvage, done, rest);
          await writeBatch(what, batch.slice(half), write, salvage, done, rest);
          return;
        }
        await salvage(batch[0]!, error);
        done(batch);
        return;
      }
    }
  }

  /** From 200 ms, doubling, at most 5 s and never past the shutdown deadline. */
  const backoff = (attempt: number) =>
    Math.min(100 * 2 ** attempt, 5_000, closing ? Math.max(giveUpAt - Date.now(), 0) : 5_000);

  /**
   * The last resort for an outcome the server refuses on its own: the job is failed for
   * good with an error saying so, by the plainest statement there is. If even that is
   * refused the job is left to reconciling, which returns it to `todo`.
   */
  async function recordUnrecordable(
    job: { id: string; attempt: number; task: string },
    what: string,
    error: unknown,
  ): Promise<void> {
    const reason = storable(`${sqlState(error) ?? 'error'}: ${errorMessage(error)}`, 500);
    const message = `outcome could not be recorded (${what}): ${reason}`;
    await writeBatch(
      `recording that a job's ${what} could not be recorded`,
      [job],
      async () => {
        await failUnrecordable(pool, schema, workerId, job.id, job.attempt, message, now());
        log.error(
          { jobId: job.id, task: job.task, err: error },
          `job failed: its ${what} could not be recorded`,
        );
      },
      async (_job, again) => {
        log.error(
          { jobId: job.id, task: job.task, err: again },
          `job ${what} could not be recorded, nor the failure saying so; it goes back to todo when the worker reconciles`,
        );
      },
      () => {},
      { inPlace: true },
    );
  }

  // The last few batches of completions and failures written, kept as they are (no work per
  // job): a cancel that committed after a handler returned, before its outcome was written,
  // recorded an abandoned run for a run already over; the worker looks here when it hears of
  // it (endedHere) and frees that run's slot.
  const written: { id: string; attempt: number }[][] = [];
  const remember = (batch: { id: string; attempt: number }[]) => {
    written.push(batch);
    if (written.length > WRITTEN_KEPT) written.shift();
  };

  const writeCompletions = async (batch: typeof completions) => {
    await completeJobs(pool, schema, workerId, batch, now());
    remember(batch);
  };

  const writeFailures = async (batch: typeof failures) => {
    const settled = await failJobs(
      pool,
      schema,
      workerId,
      batch.map((f) => f.failure),
      now(),
    );
    remember(batch.map((f) => f.failure));
    const byId = new Map(settled.map((row) => [row.id, row]));
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

  /** A failure refused alone: once more with a short message and no stack (and a fresh look at queueing locks), then the last resort. */
  const salvageFailure = async (item: (typeof failures)[number], error: unknown) => {
    const { failure, job } = item;
    const plain = { ...failure.error, message: storable(failure.error.message, 200), stack: undefined };
    await writeBatch(
      'recording a job failure again',
      [{ job, failure: { ...failure, error: plain } }],
      writeFailures,
      () => recordUnrecordable({ id: job.id, attempt: job.attempts, task: job.task }, 'failure', error),
      () => {},
      { inPlace: true },
    );
  };

  const writeReleases = async (batch: typeof releases) => {
    const result = await releaseJobs(pool, schema, workerId, batch);
    returned.released += result.released;
    returned.superseded += result.superseded;
  };

  /** A return refused alone (a queueing lock's waiting job committed meanwhile): once more, when it is superseded, then the last resort. */
  const salvageRelease = async (item: (typeof releases)[number], error: unknown) => {
    await writeBatch(
      'returning an unfinished job again',
      [item],
      writeReleases,
      () => recordUnrecordable({ ...item, task: '' }, 'return to todo', error),
      () => {},
      { inPlace: true },
    );
  };

  const writePostponements = async (batch: typeof postponements) => {
    const written = await postponeJobs(pool, schema, workerId, batch);
    const byId = new Map(written.map((row) => [row.id, row.status]));
    for (const item of batch) {
      const status = byId.get(item.id);
      if (status === undefined) continue; // recovered away from us meanwhile
      const fields = { jobId: item.id, task: item.task, retryAt: new Date(item.retryAt).toISOString() };
      if (status === 'todo')
        log.info(fields, 'job rate limited: back to todo, its queue or group paused until then');
      else
        log.error(
          fields,
          'job rate limited; superseded by a waiting job with its queueing lock, not requeued',
        );
    }
    deps.onPostponed(Math.max(...batch.map((item) => item.retryAt)));
  };

  async function flushAll(): Promise<void> {
    while (completions.length > 0) {
      const batch = completions.splice(0, MAX_BATCH);
      await writeBatch(
        'completing jobs',
        batch,
        writeCompletions,
        (completion, error) => recordUnrecordable(completion, 'success', error),
        (written) => {
          for (const completion of written) letGo(completion.id);
          if (written.some((completion) => completion.lock !== null)) onLockFreed();
          deps.onFinishedWritten();
        },
      );
    }
    while (failures.length > 0) {
      const batch = failures.splice(0, MAX_BATCH);
      await writeBatch('recording job failures', batch, writeFailures, salvageFailure, (written) => {
        for (const { job } of written) letGo(job.id);
        if (written.some(({ job }) => job.lock !== null)) onLockFreed();
        deps.onFinishedWritten();
      });
    }
    while (postponements.length > 0) {
      const batch = postponements.splice(0, MAX_BATCH);
      await writeBatch(
        'returning rate-limited jobs',
        batch,
        writePostponements,
        (item, error) => recordUnrecordable({ ...item, task: item.task }, 'rate-limited return', error),
        (written) => {
          for (const { id } of written) letGo(id);
          if (written.length > 0) deps.onFinishedWritten();
        },
      );
    }
    while (releases.length > 0) {
      const batch = releases.splice(0, MAX_BATCH);
      await writeBatch('returning unfinished jobs', batch, writeReleases, salvageRelease, (written) => {
        for (const { id } of written) letGo(id);
      });
    }
    while (committed.length > 0) {
      // Statistics of jobs already completed: a refused count is logged, never retried in
      // front of outcomes (and connection trouble only until shutdown gives up).
      const batch = committed.splice(0, MAX_BATCH);
      await writeBatch(
        'counting completed jobs',
        batch,
        (items) => countSucceeded(pool, schema, items, now()),
        async (item, error) => {
          log.warn({ err: error, task: item.task }, 'a completed job could not be counted in task_stats');
        },
        () => {},
      );
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
  async function succeedInTransaction(
    run: RunningJob,
    client: pg.PoolClient,
    durationMs: number,
    keepForMs: number | null,
    result: string | null,
  ) {
    hold(run.job.id);
    const completion = {
      id: run.job.id,
      attempt: run.job.attempts,
      task: run.job.task,
      durationMs,
      keepForMs,
      result,
    };
    try {
      const completed = await completeInTransaction(
        client,
        schema,
        workerId,
        completion,
        now(),
        ends.deadlineMs,
      );
      if (!completed) {
        await discardTransaction(client, ends);
        log.warn(
          { jobId: run.job.id, task: run.job.task, attempt: run.job.attempts },
          'job is no longer doing for this worker (recovered away from this worker while it looked dead, or cancelled): its transaction is rolled back',
        );
        return;
      }
      await withDeadline(client, ends.commitDeadlineMs).query('COMMIT');
      client.release();
      committed.push(completion);
      schedule();
      if (run.job.lock !== null) onLockFreed();
    } catch (error) {
      // The COMMIT (or the completion inside it) failed, e.g. the connection died in a
      // server restart: a failed attempt like any other, retried per the task's policy,
      // not straight to the dead letter (found by ops/chaos/restart.ts). No answer in time
      // (a half-open connection): the backend is terminated, so a COMMIT that had not
      // arrived rolls back and the failure below is the job's outcome; one that had
      // arrived stands, and the failure finds no `doing` row.
      if (failureKind(error) === 'connection') abandon(client, ends);
      else await discardTransaction(client, ends);
      fail(run.job, error, retryIn(run, error));
    } finally {
      letGo(run.job.id);
    }
  }

  function fail(job: ClaimedJob, error: unknown, retryInMs: number | null, client?: pg.PoolClient) {
    if (client) void discardTransaction(client, ends);
    const { message, stack } = describeError(error);
    hold(job.id);
    failures.push({
      job,
      failure: {
        id: job.id,
        attempt: job.attempts,
        retryInMs,
        error: { message, stack, attempt: job.attempts, at: new Date().toISOString(), worker: workerId },
      },
    });
    schedule();
  }

  /** A success with no transaction of its own (a job's, or one job of a batch): batched. */
  function complete(
    job: ClaimedJob,
    task: ResolvedTask,
    durationMs: number,
    keepForMs = task.keepSucceededForMs,
    result: string | null = null,
  ) {
    hold(job.id);
    completions.push({
      id: job.id,
      attempt: job.attempts,
      lock: job.lock,
      task: job.task,
      durationMs,
      keepForMs,
      result,
    });
    schedule();
  }

  /** A job claimed but not (or no longer) run: back to todo, uncounted. */
  function returnUnstarted(job: ClaimedJob) {
    hold(job.id);
    releases.push({ id: job.id, attempt: job.attempts });
    schedule();
  }

  /** A job whose handler threw RateLimited: back to todo at `retryAt`, uncounted; its queue or group paused. */
  function postponeJob(job: ClaimedJob, retryAt: number): void {
    hold(job.id);
    postponements.push({ id: job.id, attempt: job.attempts, task: job.task, retryAt });
    schedule();
  }

  return {
    /**
     * `value`: what the handler returned, stored as the job's result when its row is kept
     * (keepSucceededFor, or a job someone awaits). A value that is not plain JSON fails the
     * attempt instead, with the one line saying why.
     */
    succeed(run: RunningJob, durationMs: number, value: unknown): { retryInMs: number | null } | undefined {
      const keepForMs = run.keepForMs();
      let result: string | null;
      try {
        result = run.resultJson(value, keepForMs);
      } catch (error) {
        const retryInMs = retryIn(run, error);
        fail(run.job, error, retryInMs, run.takeTransaction());
        return { retryInMs };
      }
      const client = run.takeTransaction();
      if (client) {
        const committing = succeedInTransaction(run, client, durationMs, keepForMs, result).finally(() =>
          inTransaction.delete(committing),
        );
        inTransaction.add(committing);
        return undefined;
      }
      complete(run.job, run.task, durationMs, keepForMs, result);
      return undefined;
    },
    complete,
    fail,
    /** A completion not yet sent for this job is dropped (the job was claimed again). */
    dropCompletion(id: string) {
      const at = completions.findIndex((completion) => completion.id === id);
      if (at < 0) return;
      completions.splice(at, 1);
      letGo(id);
    },
    /** An outcome that must not be written (a superseded run): its transaction is rolled back. */
    discard(run: RunningJob) {
      const client = run.takeTransaction();
      if (client) void discardTransaction(client, ends);
    },
    /**
     * An interrupted job back to todo, uncounted. `busy`: its handler is still running (past
     * the shutdown deadline), so its transaction's backend is terminated, not waited for.
     */
    release(run: RunningJob, options: { busy?: boolean } = {}) {
      const client = run.takeTransaction();
      if (client) void discardTransaction(client, ends, options);
      returnUnstarted(run.job);
    },
    returnUnstarted,
    /** A job whose handler threw RateLimited: back to todo at `retryAt`, uncounted; its transaction is rolled back. */
    postpone(run: RunningJob, retryAt: number) {
      const client = run.takeTransaction();
      if (client) void discardTransaction(client, ends);
      postponeJob(run.job, retryAt);
    },
    /** A job of a batch whose handler threw (or returned) RateLimited for it: as postpone, no transaction. */
    postponeJob,
    /** Jobs handed to the writer whose outcome is not written yet. */
    unwritten: () => unwritten.keys(),
    /** Whether this claim's outcome is waiting here or was among the last batches written. */
    endedHere(id: string, attempt: number): boolean {
      return (
        unwritten.has(id) || written.some((batch) => batch.some((o) => o.id === id && o.attempt === attempt))
      );
    },
    /**
     * Writes what is pending and reports how many jobs went back to todo. Connection
     * trouble is retried for `deadlineMs` at most.
     */
    async close(deadlineMs: number): Promise<Released> {
      closing = true;
      giveUpAt = Date.now() + deadlineMs;
      await Promise.all(inTransaction);
      while (flushing || parking) await (flushing ?? parking);
      return returned;
    },
  };
}
