/**
 * The worker process loop: wake on NOTIFY (or a poll tick), claim a batch, run handlers
 * with bounded concurrency, and write outcomes back in batches; heartbeat, recover dirty
 * jobs, and shut down gracefully.
 *
 * Local state machine (why it is not one RxJS pipeline): claimed jobs wait in `buffer`
 * until a slot frees; when the buffer runs low a claim is requested. A wake-up that
 * arrives while a claim is in flight is remembered (`pendingWake`) and causes one more
 * claim, so a NOTIFY is never lost to a claim that started before its commit.
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type pg from 'pg';
import type { Logger } from 'pino';
import {
  catchError,
  EMPTY,
  exhaustMap,
  filter,
  from,
  interval,
  merge,
  Subject,
  takeUntil,
  timer,
} from 'rxjs';
import type { Clock } from '../clock.js';
import { systemClock } from '../clock.js';
import { listen } from '../db/listen.js';
import { isRetryable } from '../db/retryable.js';
import { backoffDelay } from '../jobs/backoff.js';
import { type ClaimedJob, claimJobs } from '../jobs/claim.js';
import { pruneWorkers, purgeSucceeded } from '../jobs/maintenance.js';
import { recoverStalledJobs } from '../jobs/recover.js';
import { releaseJobs } from '../jobs/release.js';
import type { ResolvedTask } from '../jobs/task.js';
import { makeDueTimer } from './dueTimer.js';
import { type JobFinished, resolveWorkerOptions, type WorkerOptions } from './options.js';
import { makeOutcomeWriter } from './outcomes.js';
import { heartbeat, registerTasks, registerWorker, setWorkerIdle, unregisterWorker } from './registry.js';
import { type Outcome, RunningJob, ShutdownAbort, unknownTaskError } from './runJob.js';

export interface WorkerDeps {
  pool: pg.Pool;
  databaseUrl: string;
  schema: string;
  log: Logger;
  clock: Clock;
  tasks: ReadonlyMap<string, ResolvedTask>;
}

export interface Worker {
  readonly id: string;
  /** Resolves once registered and listening; rejects if the worker could not start. */
  readonly started: Promise<void>;
  /** Graceful shutdown; resolves once every claimed job is finished or returned. */
  stop(): Promise<void>;
  /** A job this process deferred becomes due at `at`: claim then, not at the next poll tick. */
  wakeAt(at: Date): void;
}

export function startWorker(deps: WorkerDeps, options: WorkerOptions = {}): Worker {
  const settings = resolveWorkerOptions(options);
  const { pool, schema, clock, tasks } = deps;
  const id = `${os.hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  const log = deps.log.child({ component: 'worker', workerId: id });
  // The database clock is the one truth in production; an injected clock overrides it.
  const dbNow = () => (clock === systemClock ? null : clock.now());

  const buffer: ClaimedJob[] = [];
  const runDeps = { schema, pool, log, now: () => clock.now(), tasks };
  const running = new Map<string, RunningJob>();
  // A written outcome that frees a lock may make a waiting job claimable: claim again.
  const outcomes = makeOutcomeWriter({
    pool,
    schema,
    log,
    workerId: id,
    now: dbNow,
    retryIn,
    onLockFreed: () => wake(),
    // Armed once the retry is written: its run_at is the database's now() then, plus the wait.
    onRetryWritten: (retryInMs) => wakeIn(retryInMs),
  });
  const stopClaiming$ = new Subject<void>();
  const stopped$ = new Subject<void>();
  let stopping = false;
  const claims = new Set<Promise<void>>();
  let requested = 0; // jobs asked for by the claims in flight
  let backlog = false; // the last claim came back full: more is waiting
  let idle = true; // as published in the workers table (registered idle)
  // Running average of handler time; sizes the prefetch so quick jobs are claimed in
  // big batches and slow ones only as slots free (no hoarding jobs others could run).
  let averageMs: number | undefined;

  /** How many jobs we want in hand: free slots plus enough quick ones for prefetchWindow. */
  const target = () => {
    const free = settings.concurrency - running.size;
    const prefetch =
      averageMs === undefined
        ? 0
        : Math.ceil((settings.concurrency * settings.prefetchWindowMs) / Math.max(averageMs, 0.001));
    return Math.min(2 * settings.batchSize, free + prefetch);
  };
  const claimSize = () => Math.min(settings.batchSize, Math.max(0, target() - buffer.length - requested));

  /**
   * One claim in flight at a time (two overlapping claims measured no faster: the
   * database, not this process, is the limit). A full claim means a backlog: claim again
   * as soon as there is room. A wake-up during a claim is remembered and claims once more.
   */
  let pendingWake = false;
  const wake = () => {
    if (stopping) return;
    pendingWake = true;
    while (claims.size < 1) {
      const limit = claimSize();
      if (limit === 0) return;
      pendingWake = false;
      const claim = claimOnce(limit).finally(() => {
        claims.delete(claim);
        if (pendingWake || backlog) wake();
      });
      claims.add(claim);
    }
  };

  let claimFailures = 0; // in a row
  async function claimOnce(limit: number): Promise<void> {
    requested += limit;
    let claimed: ClaimedJob[];
    try {
      claimed = await claimJobs(pool, schema, { queues: settings.queues, limit, workerId: id, now: dbNow() });
    } catch (error) {
      // A lock race (unique jobs_lock_doing) or a lost connection: claim again soon, backing
      // off from 50 ms (the poll tick takes over beyond it); a NOTIFY may come sooner.
      claimFailures += 1;
      const retryInMs = Math.min(50 * 2 ** (claimFailures - 1), settings.pollIntervalMs);
      log.warn({ err: error, retryable: isRetryable(error), retryInMs }, 'claiming jobs failed; will retry');
      backlog = false;
      wakeIn(retryInMs);
      return;
    } finally {
      requested -= limit;
    }
    claimFailures = 0;
    backlog = claimed.length === limit;
    for (const job of claimed) buffer.push(job);
    pump();
    if (backlog === idle) {
      // Busy workers need no NOTIFY, and sparing it keeps deferring transactions from
      // committing one at a time (schema/020). On becoming idle, claim once more after
      // saying so, or a job committed in between would wait for the poll.
      idle = !backlog;
      try {
        await setWorkerIdle(pool, schema, id, idle);
      } catch (error) {
        log.warn({ err: error }, 'could not publish the idle flag; polling covers it');
      }
      if (idle) pendingWake = true;
    }
  }

  let ready = false; // registered: claims may start (the first one takes whatever was due before)
  const dueTimer = makeDueTimer(settings.pollIntervalMs, () => {
    if (ready) wake();
  });
  const wakeIn = (ms: number) => {
    if (!stopping) dueTimer.wakeIn(ms);
  };

  /** Starts buffered jobs while slots are free; asks for more when the buffer runs low. */
  function pump(): void {
    while (running.size < settings.concurrency && buffer.length > 0) {
      const job = buffer.shift()!;
      const task = tasks.get(job.task);
      if (!task) {
        outcomes.fail(job, unknownTaskError(job.task, tasks.keys()), null);
        continue;
      }
      const run = new RunningJob(job, task, runDeps);
      running.set(job.id, run);
      void run.outcome.then((outcome) => finish(run, outcome));
    }
    // Claim more only when there is reason to: the last claim came back full, or a wake-up
    // (NOTIFY, poll tick) is waiting. An empty claim must not start another, or an idle
    // worker claims in a loop (it did: ~8,000 empty claims a second).
    if (
      !stopping &&
      (backlog || pendingWake) &&
      buffer.length < Math.max(settings.concurrency, target() / 2)
    ) {
      wake();
    }
  }

  function finish(run: RunningJob, outcome: Outcome): void {
    if (run.settled) return; // already released at shutdown
    run.settled = true;
    // A job recovered away from us (we looked dead) may have been claimed by us again:
    // the map then holds the newer run, and this older one must still be settled, or its
    // transaction stays open for good (found with the SIGSTOP case of ops/chaos/kill.ts).
    if (running.get(run.job.id) === run) running.delete(run.job.id);
    const { job } = run;
    if (outcome.kind === 'succeeded') {
      averageMs = averageMs === undefined ? outcome.durationMs : averageMs * 0.9 + outcome.durationMs * 0.1;
      outcomes.succeed(run, outcome.durationMs);
      observe({ task: job.task, outcome: 'succeeded', durationMs: outcome.durationMs });
    } else if (outcome.kind === 'failed') {
      const wait = retryIn(run, outcome.error);
      outcomes.fail(job, outcome.error, wait, run.takeTransaction());
      observe({
        task: job.task,
        outcome: wait === null ? 'failed' : 'retried',
        durationMs: outcome.durationMs,
      });
    } else {
      outcomes.release(run);
    }
    if (!stopping) pump();
  }

  /** The metrics hook; an observer that throws must not take a job's outcome with it. */
  function observe(event: JobFinished): void {
    try {
      options.onJobFinished?.(event);
    } catch (error) {
      log.warn({ err: error }, 'onJobFinished threw');
    }
  }

  /** The wait before the next attempt after `error`, or null for the dead letter (budget spent, or retryOn said no). */
  function retryIn(run: RunningJob, error: unknown): number | null {
    const { job, task } = run;
    const retryable = job.attempts < job.max_attempts && safeRetryOn(task, error);
    return retryable ? backoffDelay(task.backoff, job.attempts) : null;
  }

  function safeRetryOn(task: ResolvedTask, error: unknown): boolean {
    try {
      return task.retryOn(error) !== false;
    } catch (retryOnError) {
      log.warn({ err: retryOnError, task: task.name }, 'retryOn threw; retrying the job');
      return true;
    }
  }

  const channel = `${schema}_jobs`;

  async function maintain(): Promise<void> {
    const recovered = await recoverStalledJobs(pool, schema, dbNow(), id);
    for (const job of recovered) {
      log.warn(
        { jobId: job.id, task: job.task, deadWorker: job.worker, reason: job.reason, status: job.status },
        job.reason === 'retry'
          ? 'recovered a dirty job (its worker stopped heartbeating): back to todo'
          : `recovered a dirty job (its worker stopped heartbeating): failed (${job.reason})`,
      );
    }
    if (recovered.length > 0) wake();
    await purgeSucceeded(pool, schema, dbNow());
    await pruneWorkers(pool, schema, dbNow());
  }

  async function beat(): Promise<void> {
    if (!(await heartbeat(pool, schema, id, dbNow()))) {
      log.warn('worker row was pruned while we were unreachable; registering again');
      await registerWorker(pool, schema, workerInfo(), dbNow());
    }
  }

  const workerInfo = () => ({
    id,
    queues: settings.queues,
    concurrency: settings.concurrency,
    stallTimeoutMs: settings.stallTimeoutMs,
  });

  const logFailure = (what: string) => (error: unknown) => {
    log.warn({ err: error }, `${what} failed; will try again`);
  };

  async function shutdown(): Promise<void> {
    stopping = true;
    stopClaiming$.next();
    dueTimer.clear();
    await Promise.all(claims);
    const waiting = buffer.splice(0);
    log.info(
      { running: running.size, unstarted: waiting.length, shutdownTimeoutMs: settings.shutdownTimeoutMs },
      running.size > 0
        ? `shutting down: stopped claiming; waiting up to ${settings.shutdownTimeoutMs} ms for ${running.size} running job(s)`
        : 'shutting down: stopped claiming',
    );
    const release = await releaseJobs(
      pool,
      schema,
      id,
      waiting.map((job) => job.id),
    ).catch((error) => {
      log.error({ err: error }, 'could not return unstarted jobs; they will be recovered as dirty');
      return { released: 0, superseded: 0 };
    });
    for (const run of running.values()) {
      run.shuttingDown = true;
      run.abort(new ShutdownAbort());
    }
    let timeout: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all([...running.values()].map((run) => run.outcome)),
      new Promise((resolve) => {
        timeout = setTimeout(resolve, settings.shutdownTimeoutMs);
      }),
    ]);
    clearTimeout(timeout);
    await new Promise((resolve) => setImmediate(resolve)); // let settled outcomes reach finish()
    const unfinished = [...running.values()];
    running.clear();
    for (const run of unfinished) {
      run.settled = true;
      outcomes.release(run);
    }
    const written = await outcomes.close();
    log.info(
      {
        returnedToTodo: release.released + written.released,
        supersededOnReturn: release.superseded + written.superseded,
        unfinishedHandlers: unfinished.length,
      },
      `worker stopped: ${release.released + written.released} unfinished job(s) returned to todo without counting the attempt`,
    );
    stopped$.next();
    await unregisterWorker(pool, schema, id).catch(logFailure('unregistering the worker'));
  }

  const started = (async () => {
    await registerTasks(pool, schema, [...tasks.values()]);
    await registerWorker(pool, schema, workerInfo(), dbNow());
    log.info(
      { queues: settings.queues ?? 'all', concurrency: settings.concurrency, tasks: [...tasks.keys()] },
      'worker started',
    );

    // exhaustMap: a heartbeat or maintenance pass still running when the next tick comes
    // is not doubled up; the tick is dropped. Heartbeats go on during shutdown (until
    // stopped$) so running handlers are not mistaken for dead ones.
    timer(0, settings.heartbeatIntervalMs)
      .pipe(
        exhaustMap(() => from(beat().catch(logFailure('heartbeat')))),
        takeUntil(stopped$),
      )
      .subscribe();
    timer(0, settings.recoverIntervalMs)
      .pipe(
        exhaustMap(() => from(maintain().catch(logFailure('recovering dirty jobs')))),
        takeUntil(stopClaiming$),
      )
      .subscribe();
    const queues = settings.queues === null ? null : new Set(settings.queues);
    merge(
      listen({ url: deps.databaseUrl, channels: [channel], log }).pipe(
        // After a (re)connection notifications may have been missed: check now.
        filter((note) => note.kind === 'connected' || queues === null || queues.has(note.payload)),
        // catchError on the inner stream only: losing LISTEN must not end the polling.
        catchError((error) => {
          log.error({ err: error }, 'LISTEN failed for good; waking by polling only');
          return EMPTY;
        }),
      ),
      interval(settings.pollIntervalMs),
    )
      .pipe(takeUntil(stopClaiming$))
      .subscribe(() => wake());
    ready = true;
    wake();
  })();
  // A worker that failed to start claims nothing, and its timers must not keep the process up.
  started.catch(() => {
    stopping = true;
    dueTimer.clear();
  });

  let stopped: Promise<void> | undefined;
  const stop = () => {
    // A worker that failed to start has nothing to shut down.
    stopped ??= started.then(shutdown, () => undefined);
    return stopped;
  };
  return {
    id,
    started,
    stop,
    wakeAt: (at) => wakeIn(at.getTime() - clock.now().getTime()),
  };
}
