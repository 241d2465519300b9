/**
 * The worker: claimed jobs wait in `buffer` until a slot frees, handlers run with bounded
 * concurrency, outcomes are written back in batches, and a graceful shutdown returns what
 * was not finished. The claim slot lives in claimLoop.ts, heartbeat and maintenance in
 * upkeep.ts.
 *
 * Connections: the worker's control work (claims, outcomes, heartbeat, recovery) has a
 * small pool of its own, and handlers another (workerPools.ts).
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type { Logger } from 'pino';
import { catchError, EMPTY, filter, interval, merge, Subject, takeUntil } from 'rxjs';
import type { Clock } from '../clock.js';
import { systemClock } from '../clock.js';
import { listen } from '../db/listen.js';
import { type ConnectionRoute, DIRECT } from '../db/pooler.js';
import { retryConnection } from '../db/retry.js';
import { JobCancelledError } from '../errors.js';
import { holdAbandonedRuns, releaseAbandonedRuns } from '../jobs/abandoned.js';
import { backoffDelay } from '../jobs/backoff.js';
import type { ClaimedJob } from '../jobs/claim.js';
import type { JobQueue } from '../jobs/queue.js';
import { asRateLimited } from '../jobs/rateLimited.js';
import type { ResolvedTask } from '../jobs/task.js';
import type { Tracing } from '../trace/tracing.js';
import { makeBatchRunner } from './batchRunner.js';
import { makeClaimLoop } from './claimLoop.js';
import { makeJobsVacuum } from './jobsVacuum.js';
import { type JobFinished, resolveWorkerOptions, type WorkerOptions } from './options.js';
import { makeOutcomeWriter } from './outcomes.js';
import { makeProgressWriter } from './progress.js';
import { type Outcome, RunningJob, ShutdownAbort } from './runJob.js';
import { makeUpkeep } from './upkeep.js';
import { makeWorkerPoolShelf, type WorkerPoolShelf } from './workerPools.js';
import {
  claimsNoLongerHeld,
  otherTasks,
  registerTasks,
  registerWorker,
  unregisterWorker,
} from './workersTable.js';

/**
 * A running job is keyed by its claim, not its id: a job recovered away from this worker
 * (it looked dead) may be claimed by it again while the old run still runs.
 */
const claimKey = (job: ClaimedJob) => `${job.id}:${job.attempts}`;
/** How long an abandoned handler runs on before the log names it. */
const ABANDONED_WARN_MS = 60_000;
/** How many released cancels of ended runs are remembered (cancelRun). */
const RELEASED_ENDED_KEPT = 1_024;
/** How many cancels that matched no claim are remembered, for a claim whose reply is late. */
const UNMATCHED_CANCELS_KEPT = 1_024;

/** A job's progress is written at most this often (docs/lifecycle.md). */
const PROGRESS_THROTTLE_MS = 1_000;

export interface WorkerDeps {
  databaseUrl: string;
  /** Direct or through a pooler (the app's Database.route); default: direct, LISTEN on databaseUrl. */
  route?: ConnectionRoute;
  /** The queue's defer: a handler's `ctx.defer` takes the same path (validation, clock, wake-ups). */
  defer: JobQueue['defer'];
  schema: string;
  log: Logger;
  clock: Clock;
  tasks: ReadonlyMap<string, ResolvedTask>;
  /** Where the worker takes its connections from and leaves them at a clean stop (the app's); none: its own, ended at stop. */
  pools?: WorkerPoolShelf;
  /** Ends start-up's retries through connection trouble (app.run's `signal`): `started` rejects with StartAborted. */
  startSignal?: AbortSignal;
  /** The app's tracing: handler spans, and the cause of what handlers write (docs/tracing.md). */
  tracing?: Tracing;
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
  const { schema, clock, tasks } = deps;
  const id = `${os.hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  const log = deps.log.child({ component: 'worker', workerId: id });
  // The database clock is the one truth in production; an injected clock overrides it.
  const dbNow = () => (clock === systemClock ? null : clock.now());
  // A control statement with no answer within a third of the stall timeout (at least 2 s)
  // is abandoned (its connection discarded) so that a half-open connection cannot hang the
  // claim slot or the outcome writer for good. Abandoned statements are the "reply lost"
  // case every control statement already handles. The floor keeps a loaded server's slow
  // statements from being abandoned and redone (with a 1 s stall timeout and a 333 ms
  // deadline, tests under load failed at start-up); the heartbeat has its own, shorter
  // deadline (upkeep.ts). The pools' other settings: workerPools.ts.
  const controlDeadlineMs = Math.max(2_000, Math.round(settings.stallTimeoutMs / 3));
  const shelf = deps.pools ?? makeWorkerPoolShelf(deps.log);
  const route = deps.route ?? { ...DIRECT, listenUrl: deps.databaseUrl };
  const pools = shelf.take(deps.databaseUrl, deps.log, {
    concurrency: settings.concurrency,
    controlDeadlineMs,
    pooler: route.pooler,
    preparedStatements: route.preparedStatements,
  });
  const { control, handlers } = pools;
  // A clean stop leaves the pools for the app's next run; a handler still running, or a
  // worker that failed to start, has them ended.
  let poolsReusable = false;

  const buffer: ClaimedJob[] = [];
  // Our own statements on a handler connection (the in-transaction completion, ROLLBACK) get
  // the control deadline; its COMMIT, which runs the job's deferred work (deferred
  // constraints, triggers), gets the stall timeout (the heartbeat goes on meanwhile). A
  // connection given up on has its backend terminated.
  const ends = {
    control,
    deadlineMs: controlDeadlineMs,
    commitDeadlineMs: Math.max(controlDeadlineMs, settings.stallTimeoutMs),
    log,
    terminating: new Set<Promise<void>>(),
  };
  // ctx.progress reports: at most one write per job per second (progress.ts).
  const progress = makeProgressWriter({
    pool: control,
    schema,
    workerId: id,
    log,
    throttleMs: PROGRESS_THROTTLE_MS,
  });
  const runDeps = {
    pool: handlers,
    log,
    defer: deps.defer,
    ends,
    progress: progress.report,
    tracing: deps.tracing,
    holdAbandoned: (job: ClaimedJob) => holdRuns([job]),
  };
  const running = new Map<string, RunningJob>();
  // Runs cancelled or timed out whose handler has not returned: their abandoned_runs rows
  // keep their slots and locks taken until it does (src/jobs/abandoned.ts). A set, not a map
  // by claim key: a retried job's new run may have the key of an old one still going.
  const abandoned = new Set<RunningJob>();
  // Keys of ended runs whose cancel has been released (cancelRun): a cancel is released once.
  // Written only when a cancel arrives for a run already over: nothing per job.
  const releasedEnded = new Set<string>();
  // Cancel NOTIFYs that matched no claim here (cancelRun): most are other workers' claims,
  // but one may be of a claim whose reply has not reached us yet. Bounded, oldest out.
  const unmatchedCancels = new Set<string>();
  // Claims that came with such a key, held back until the database says whether they are
  // cancelled (recheckEarlyCancels): a cancelled one must not start, even for a moment.
  const checking = new Set<ClaimedJob>();
  let rechecking = false; // a question about `checking` is on its way
  let recheckWanted = false; // claims came into `checking` meanwhile, or a cancel was heard
  // Jobs placed after that question: a newer claim of one supersedes it even at attempt 1
  // (supersedeEarlierClaims). Only such race survivors; bounded, oldest out.
  const placedAfterCheck = new Set<string>();
  // Tasks this worker does not know — registered by other workers, or met in a claim: claims skip them.
  const foreignTasks = new Set<string>();
  const outcomes = makeOutcomeWriter({
    ends,
    pool: control,
    schema,
    log,
    workerId: id,
    now: dbNow,
    retryIn: (run, error) => retryIn(run.job, run.task, error),
    // A written outcome that frees a lock may make a waiting job claimable: claim again.
    onLockFreed: () => claims.wake(),
    // Armed once the retry is written: its run_at is the database's now() then, plus the wait.
    onRetryWritten: (retryInMs) => claims.wakeIn(retryInMs),
    // A finished job of a limited queue frees a slot no NOTIFY announces. Only while limits
    // exist: otherwise nothing waits for a slot, and this would be an extra claim per batch.
    onFinishedWritten: () => {
      if (claims.limited()) claims.wake();
    },
    // The pause is written: this worker claims around it at once (the others learn of the
    // limits row at their next heartbeat, and the plain claim skips the queue meanwhile).
    onPostponed: (retryAt) => {
      claims.setLimited(true);
      claims.wakeIn(Math.max(0, retryAt - Date.now()));
    },
  });
  const stopClaiming$ = new Subject<void>();
  let stopping = false;
  // Batch tasks' jobs (docs/batches.md): gathered into batches, a running batch takes one slot.
  const batches = makeBatchRunner({
    tasks,
    log,
    outcomes,
    retryIn,
    observe,
    pump: () => {
      if (!stopping) pump();
    },
    holdAbandoned: (jobs) => holdRuns(jobs),
    releaseAbandoned: (jobs) => {
      // A beat sent while the batch ran may report these cancels again: released once.
      for (const job of jobs) rememberReleased(claimKey(job));
      releaseRuns(jobs);
    },
  });
  const busy = () => running.size + batches.running();
  // The kind of the claim being made: for the batches being collected only, or for the rest.
  let claimingForBatches = false;
  const plainTasks = [...tasks.values()].filter((task) => !task.batch).map((task) => task.name);
  // Running average of handler time; sizes the prefetch so quick jobs are claimed in
  // big batches and slow ones only as slots free (no hoarding jobs others could run).
  let averageMs: number | undefined;

  /** How many jobs we want in hand: free slots plus enough quick ones for prefetchWindow. */
  const target = () => {
    const free = settings.concurrency - busy();
    const prefetch =
      averageMs === undefined
        ? 0
        : Math.ceil((settings.concurrency * settings.prefetchWindowMs) / Math.max(averageMs, 0.001));
    return Math.min(2 * settings.batchSize, free + prefetch);
  };

  const vacuum = makeJobsVacuum(control, schema, log, settings.vacuumJobsAfter);
  const claims = makeClaimLoop({
    control,
    schema,
    log,
    workerId: id,
    settings,
    // room() decides the kind of the claim it sizes, and the claim loop asks skipTasks() at
    // once after it for the same claim: a claim for batches skips every other task.
    skipTasks: () => (claimingForBatches ? [...foreignTasks, ...plainTasks] : [...foreignTasks]),
    dbNow,
    // A worker with no tasks has nothing to claim for (every job would be given back).
    room: () => {
      if (stopping || tasks.size === 0) return 0;
      const room = target() - buffer.length - checking.size;
      if (batches.names.size === 0) return room;
      const next = batches.claim(room, claimingForBatches);
      claimingForBatches = next.batchesOnly;
      return next.limit;
    },
    held: heldIds,
    onClaimed: (jobs) => {
      vacuum.claimed(jobs.length);
      // After a claim for batches, one for the other room (batches.claim takes them in turn).
      if (claimingForBatches) claims.wake();
      if (deps.tracing?.otel) {
        const claimedAtMs = Date.now();
        for (const job of jobs) job.claimedAtMs = claimedAtMs;
      }
      let toCheck = false;
      for (const job of jobs) {
        if (!tasks.has(job.task)) {
          giveBackForeign(job); // at once, not when a slot frees: it must not wait behind a running job
          continue;
        }
        supersedeEarlierClaims(job);
        if (unmatchedCancels.size > 0 && unmatchedCancels.delete(claimKey(job))) {
          checking.add(job);
          toCheck = true;
        } else place(job);
      }
      if (toCheck) recheckEarlyCancels();
      pump();
    },
  });

  const info = {
    id,
    queues: settings.queues,
    concurrency: settings.concurrency,
    stallTimeoutMs: settings.stallTimeoutMs,
    tasks: [...tasks.keys()],
  };
  const upkeep = makeUpkeep({
    control,
    schema,
    log,
    info,
    settings,
    dbNow,
    onRecovered: () => claims.wake(),
    reconcile: () => claims.reconcile(),
    onOtherTasks: (names) => {
      for (const name of names) foreignTasks.add(name);
    },
    claims: () => unfinishedClaims().map((job) => ({ id: job.id, attempt: job.attempts })),
    held: () => [...heldIds(), ...[...abandoned].map((run) => run.job.id)],
    onCancelled: (keys) => {
      for (const key of keys) cancelRun(key);
    },
    onLimits: (limited) => claims.setLimited(limited),
  });

  /** A claim in hand goes to its batch, or to the buffer to wait for a slot. */
  function place(job: ClaimedJob): void {
    if (batches.names.size > 0 && batches.names.has(job.task)) batches.add(job);
    else buffer.push(job);
  }

  /** The claims this worker holds whose handler has not finished: buffered, running, batches'. */
  function unfinishedClaims(): ClaimedJob[] {
    return [
      ...buffer,
      ...checking,
      ...[...running.values()].map((run) => run.job),
      ...(batches.names.size === 0 ? [] : batches.held()),
    ];
  }

  /** The jobs this worker holds: its unfinished claims, and outcomes not yet written. */
  function heldIds(): string[] {
    return [...unfinishedClaims().map((job) => job.id), ...outcomes.unwritten()];
  }

  /**
   * A run this worker stopped watching (cancelled, timed out): its abandoned_runs row keeps
   * its slot and lock taken until the handler returns, then goes, and a claim may take them.
   * A handler still running after a minute is named once in the log: it holds them until it
   * returns or this worker stops.
   */
  function watchAbandoned(run: RunningJob): void {
    const { job } = run;
    abandoned.add(run);
    const named = setTimeout(() => {
      log.warn(
        { jobId: job.id, task: job.task, attempt: job.attempts, queue: job.queue, lock: job.lock },
        'a cancelled or timed-out handler has ignored its signal for a minute: its queue slot, group slot and lock stay taken until it returns or this worker stops',
      );
    }, ABANDONED_WARN_MS);
    named.unref?.();
    void run.handlerSettled().then(() => {
      clearTimeout(named);
      abandoned.delete(run);
      releaseRuns([job]);
    });
  }

  /** Records runs given up on at their timeout, before their failure is written. Never rejects. */
  function holdRuns(jobs: ClaimedJob[]): Promise<void> {
    return holdAbandonedRuns(control, schema, id, jobs).catch((error: unknown) => {
      log.warn(
        { err: error, jobIds: jobs.map((job) => job.id), task: jobs[0]?.task },
        'could not record a timed-out run whose handler may still run: its slot and lock are free now',
      );
    });
  }

  /** A cancelled run of this key has been released: a later report of its cancel is not. */
  function rememberReleased(key: string): void {
    releasedEnded.add(key);
    if (releasedEnded.size > RELEASED_ENDED_KEPT) releasedEnded.delete(releasedEnded.values().next().value!);
  }

  /** Frees abandoned runs' slots and locks now (the heartbeat sweeps them if this fails). */
  function releaseRuns(jobs: Pick<ClaimedJob, 'id' | 'attempts'>[]): void {
    void releaseAbandonedRuns(control, schema, id, jobs).then(
      () => {
        if (!stopping) claims.wake();
      },
      (error: unknown) =>
        log.debug(
          { err: error, jobIds: jobs.map((job) => job.id) },
          'abandoned runs not released: the heartbeat will',
        ),
    );
  }

  /**
   * An operator cancelled a running job (`<id>:<attempt>`, from the NOTIFY or the
   * heartbeat). The row is already `cancelled` (src/jobs/operate.ts): the handler's signal
   * is aborted and its slot freed now, as at a timeout, and its transaction rolled back. A
   * handler that ignores the signal runs on unwatched; whatever it returns or writes later
   * is discarded (its outcome finds no `doing` row). A cancel of a claim no longer running
   * here — finished, its outcome on its way — is ignored: that outcome changes nothing. A
   * claim still waiting in the buffer for a slot, or collected for its batch, is dropped,
   * never started. The cancel freed the job's lock: the next job of it may be claimable.
   * The NOTIFY comes on another connection than the claim's reply and may overtake it: a
   * cancel that matches nothing here is remembered, and a claim that arrives with its key
   * is asked about (recheckEarlyCancels). Each beat asks about every unfinished claim too,
   * so a cancel missed both ways is found within a heartbeat interval.
   */
  function cancelRun(key: string): void {
    const waiting = buffer.findIndex((job) => claimKey(job) === key);
    if (waiting >= 0) {
      const [job] = buffer.splice(waiting, 1);
      log.info({ jobId: job!.id, task: job!.task }, 'job cancelled before it started: dropped');
      releaseRuns([job!]); // the cancel recorded it as a run; it never started
      return;
    }
    // A batch task's job still collected for its batch is dropped the same way (it was
    // handed to the handler with the batch's other jobs; found by review).
    if (batches.names.size > 0) {
      const [id, attempt] = key.split(':');
      if (batches.dropCancelled(id!, Number(attempt))) {
        log.info({ jobId: id }, 'job cancelled before it started: dropped from its batch');
        releaseRuns([{ id: id!, attempts: Number(attempt) }]);
        return;
      }
      if (batches.cancelledWhileRunning(id!, Number(attempt))) return; // released when the call returns
    }
    const run = running.get(key);
    if (!run || run.settled) {
      // The handler returned here before the cancel committed (its outcome had not): the
      // cancel recorded a run that is over (outcomes.ts endedHere). Missed, the heartbeat
      // sweeps it.
      const [endedId, endedAttempt] = key.split(':');
      // Once per key: the NOTIFY and a heartbeat sent while it still ran may both report
      // it, and a second release would free the row of an older run of the same key (a
      // retried job) still going (found by review). A key cancelled again later after its
      // handler ended keeps its row until the heartbeat sweep: a slot held, never one too many.
      if (!run && !releasedEnded.has(key) && outcomes.endedHere(endedId!, Number(endedAttempt))) {
        rememberReleased(key);
        releaseRuns([{ id: endedId!, attempts: Number(endedAttempt) }]);
      } else if (!run) {
        log.debug({ claim: key }, 'a cancel matched no claim held here: remembered for a late claim reply');
        unmatchedCancels.add(key);
        if (unmatchedCancels.size > UNMATCHED_CANCELS_KEPT)
          unmatchedCancels.delete(unmatchedCancels.values().next().value!);
      }
      return;
    }
    run.abort(new JobCancelledError(run.job.id));
    finish(run, { kind: 'cancelled' });
  }

  /**
   * Claims just received whose cancel NOTIFY came first, held in `checking`: the database
   * says which are no longer this worker's (cancelled; or cancelled and retried since — the
   * key alone could be a retried job's new run, as `jobs retry` starts attempts over). Those
   * are dropped, never started; the others take their place. A cancel heard while the
   * question is on its way asks again (the answer may predate it). Failing to ask, they take
   * their place too: the next beat asks again, and a cancel found then aborts the handler.
   * One taken from `checking` by shutdown (returned to `todo` there) or by a newer claim of
   * its job (supersedeEarlierClaims) is not placed.
   */
  function recheckEarlyCancels(): void {
    // One question at a time: an older answer must not place a claim a newer one would drop.
    if (rechecking) {
      recheckWanted = true;
      return;
    }
    rechecking = true;
    recheckWanted = false;
    const early = [...checking];
    const settle = (gone: ReadonlySet<string>) => {
      rechecking = false;
      for (const job of early) {
        if (!checking.has(job)) continue;
        if (gone.has(claimKey(job))) {
          checking.delete(job);
          log.info({ jobId: job.id, task: job.task }, 'job cancelled before it started: dropped');
          releaseRuns([job]); // the cancel recorded it as a run; it never started
        } else if (unmatchedCancels.delete(claimKey(job))) {
          // A cancel came (cancelRun does not look here) while the answer was on its way,
          // which may predate it: ask again. The cancel committed before its NOTIFY.
          recheckWanted = true;
        } else {
          checking.delete(job);
          placedAfterCheck.add(job.id);
          if (placedAfterCheck.size > UNMATCHED_CANCELS_KEPT)
            placedAfterCheck.delete(placedAfterCheck.values().next().value!);
          place(job);
        }
      }
      if (recheckWanted && checking.size > 0) recheckEarlyCancels();
      if (!stopping) pump();
    };
    claimsNoLongerHeld(control, schema, id, early)
      .then(
        (keys) => settle(new Set(keys)),
        (error: unknown) => {
          log.debug(
            { err: error, jobIds: early.map((job) => job.id) },
            'could not ask whether claims were cancelled: the heartbeat will',
          );
          settle(new Set());
        },
      )
      .catch((error: unknown) => {
        // Never expected (placing and pumping do not throw): logged, not an unhandled rejection.
        log.error({ err: error }, 'could not settle claims held back for a cancel');
      });
  }

  /**
   * A job recovered away from us (we looked dead: a long GC pause, a frozen VM) and now
   * claimed by us again: an older copy of it must not run beside the new claim. One still
   * waiting in the buffer is dropped; one still running has its outcome dropped (and its
   * transaction rolled back), as does a completion not yet sent. A completion already on
   * its way cannot settle the new claim either: outcomes match the claim's attempt in SQL.
   */
  function supersedeEarlierClaims(job: ClaimedJob): void {
    // One held back in `checking` is older whatever its attempt: `jobs retry` starts attempts
    // over, so a cancelled claim retried and claimed again may share its key. Never started,
    // its abandoned run (the cancel's) is freed; a recovered one (lower attempt) had none.
    if (checking.size > 0) {
      for (const held of checking) {
        if (held.id !== job.id) continue;
        checking.delete(held);
        if (held.attempts >= job.attempts) releaseRuns([held]);
      }
    }
    // A first attempt had no earlier claim (the common case: no scan), unless one placed
    // after a cancel's question may be a cancelled run retried since (recheckEarlyCancels).
    if (job.attempts <= 1 && !(placedAfterCheck.size > 0 && placedAfterCheck.delete(job.id))) return;
    for (let i = buffer.length - 1; i >= 0; i -= 1) if (buffer[i]!.id === job.id) buffer.splice(i, 1);
    for (const run of running.values()) if (run.job.id === job.id) run.superseded = true;
    if (batches.names.size > 0) batches.supersede(job.id);
    outcomes.dropCompletion(job.id);
  }

  /**
   * A job of a task this worker does not know — in a rolling deploy, a newer version's
   * task — goes back to `todo` uncounted, for a worker that knows it, and the worker skips
   * that task's jobs from then on (claim.ts says why it claims by exclusion). Tasks other
   * workers registered are skipped before any is claimed (upkeep.ts); this covers a job
   * deferred by new code before any new worker started.
   */
  function giveBackForeign(job: ClaimedJob): void {
    outcomes.returnUnstarted(job);
    if (foreignTasks.has(job.task)) return;
    foreignTasks.add(job.task);
    log.warn(
      { task: job.task, known: [...tasks.keys()] },
      `claimed a job of task "${job.task}", which this worker does not know (a newer version's?): gave it back uncounted; this worker leaves that task's jobs to workers that know it`,
    );
  }

  /** Starts buffered jobs while slots are free; asks for more when the buffer runs low. */
  function pump(): void {
    // Ready batches first: they have waited for their jobs already.
    if (batches.names.size > 0) batches.start(settings.concurrency - busy());
    while (busy() < settings.concurrency && buffer.length > 0) {
      const job = buffer.shift()!;
      const task = tasks.get(job.task)!; // onClaimed buffers only known tasks
      const run = new RunningJob(job, task, runDeps);
      running.set(run.key, run);
      void run.outcome
        .then((outcome) => finish(run, outcome))
        .catch((error) => {
          // Never expected (outcomes never throw); the job is left to reconciling, which returns it to todo.
          log.error(
            { err: error, jobId: job.id, task: job.task },
            'could not hand a job outcome to the writer',
          );
        });
    }
    // Claim more only when there is reason to: the last claim came back full, or a wake-up
    // (NOTIFY, poll tick) is waiting. An empty claim must not start another, or an idle
    // worker claims in a loop (it did: ~8,000 empty claims a second).
    if (!stopping && claims.wantsMore() && buffer.length < Math.max(settings.concurrency, target() / 2)) {
      claims.wake();
    }
  }

  function finish(run: RunningJob, outcome: Outcome): void {
    if (run.settled) return; // already released at shutdown
    run.settled = true;
    run.endSpan(outcome);
    running.delete(run.key);
    const { job } = run;
    if (outcome.kind === 'cancelled' || run.timedOut) watchAbandoned(run);
    if (run.superseded) {
      // Its transaction is rolled back, not left open (found with the SIGSTOP case of
      // ops/chaos/kill.ts); the newer claim's run settles the job.
      outcomes.discard(run);
      log.warn(
        { jobId: job.id, task: job.task, attempt: job.attempts },
        'a newer claim of this job is running: this run is dropped',
      );
      if (!stopping) pump();
      return;
    }
    const limited = outcome.kind === 'failed' ? asRateLimited(outcome.error) : null;
    if (outcome.kind === 'cancelled') {
      outcomes.discard(run);
      log.info(
        { jobId: job.id, task: job.task, attempt: job.attempts },
        'job cancelled while running: its handler was aborted, its transaction rolled back',
      );
    } else if (outcome.kind === 'succeeded') {
      averageMs = averageMs === undefined ? outcome.durationMs : averageMs * 0.9 + outcome.durationMs * 0.1;
      // A result that is not plain JSON turned the success into a failed attempt.
      const refused = outcomes.succeed(run, outcome.durationMs, outcome.value);
      observe({
        task: job.task,
        outcome: refused ? (refused.retryInMs === null ? 'failed' : 'retried') : 'succeeded',
        durationMs: outcome.durationMs,
      });
    } else if (limited !== null) {
      // The downstream said wait: not an attempt that failed (docs/limits.md).
      outcomes.postpone(run, limited.retryAt);
    } else if (outcome.kind === 'failed') {
      const wait = retryIn(run.job, run.task, outcome.error);
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
  function retryIn(job: ClaimedJob, task: ResolvedTask, error: unknown): number | null {
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
  const cancelChannel = `${schema}_cancel`;

  async function shutdown(): Promise<void> {
    stopping = true;
    stopClaiming$.next();
    const maintenanceEnded = upkeep.stopMaintenance();
    const vacuumEnded = vacuum.stop(); // a vacuum in flight is cancelled, not waited out
    await claims.close();
    const waiting = [...buffer.splice(0), ...checking, ...batches.takeWaiting()];
    checking.clear();
    log.info(
      { running: running.size, unstarted: waiting.length, shutdownTimeoutMs: settings.shutdownTimeoutMs },
      running.size > 0
        ? `shutting down: stopped claiming; waiting up to ${settings.shutdownTimeoutMs} ms for ${running.size} running job(s)`
        : 'shutting down: stopped claiming',
    );
    for (const job of waiting) outcomes.returnUnstarted(job);
    for (const run of running.values()) {
      run.shuttingDown = true;
      run.abort(new ShutdownAbort());
    }
    const batchesSettled = batches.abortRunning(new ShutdownAbort());
    let timeout: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all([...[...running.values()].map((run) => run.outcome), batchesSettled]),
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
      run.endSpan({ kind: 'interrupted' });
      outcomes.release(run, { busy: true });
    }
    const unfinishedBatches = batches.returnUnfinished();
    const written = await outcomes.close(Math.max(1_000, Math.min(settings.shutdownTimeoutMs, 10_000)));
    await progress.close();
    log.info(
      {
        returnedToTodo: written.released,
        supersededOnReturn: written.superseded,
        unfinishedHandlers: unfinished.length + unfinishedBatches,
      },
      `worker stopped: ${written.released} unfinished job(s) returned to todo without counting the attempt`,
    );
    await claims.sweep();
    await maintenanceEnded;
    await vacuumEnded;
    // No beat may land after the row is deleted, or it would register a ghost worker.
    await upkeep.stopHeartbeat();
    const unregistered = await unregisterWorker(control, schema, id).then(
      () => true,
      (error) => {
        log.warn({ err: error }, 'unregistering the worker failed; its row is pruned later');
        return false;
      },
    );
    // Nothing of this worker may still be using a connection it hands on.
    poolsReusable =
      unfinished.length + unfinishedBatches === 0 && [...outcomes.unwritten()].length === 0 && unregistered;
    await closePools();
  }

  const closePools = async () => {
    await Promise.all(ends.terminating);
    await shelf.putBack(pools, poolsReusable);
  };

  const started = (async () => {
    await retryConnection(
      'registering the worker',
      async () => {
        await registerTasks(control, schema, [...tasks.values()]);
        await registerWorker(control, schema, info, dbNow());
        for (const name of await otherTasks(control, schema, info.tasks)) foreignTasks.add(name);
      },
      log,
      { signal: deps.startSignal },
    );
    log.info(
      { queues: settings.queues ?? 'all', concurrency: settings.concurrency, tasks: [...tasks.keys()] },
      'worker started',
    );
    upkeep.start();
    const queues = settings.queues === null ? null : new Set(settings.queues);
    merge(
      listen({ url: route.listenUrl, channels: [channel, cancelChannel], log }).pipe(
        filter((note) => {
          if (note.kind === 'notification' && note.channel === cancelChannel) {
            cancelRun(note.payload); // not a reason to claim
            return false;
          }
          // After a (re)connection notifications may have been missed: check now.
          return note.kind === 'connected' || queues === null || queues.has(note.payload);
        }),
        // catchError on the inner stream only: losing LISTEN must not end the polling.
        catchError((error) => {
          log.error({ err: error }, 'LISTEN failed for good; waking by polling only');
          return EMPTY;
        }),
      ),
      interval(settings.pollIntervalMs),
    )
      .pipe(takeUntil(stopClaiming$))
      .subscribe(() => claims.wake());
    claims.open();
  })();
  // A worker that failed to start claims nothing, and its timers and connections must
  // not keep the process up.
  started.catch(() => {
    stopping = true;
    void claims.close();
    void closePools();
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
    wakeAt: (at) => claims.wakeIn(at.getTime() - clock.now().getTime()),
  };
}
