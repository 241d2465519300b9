/**
 * The worker's upkeep, on the control pool beside the claim loop: the heartbeat that
 * keeps its jobs from looking dirty, and the maintenance pass — recovering other workers'
 * dirty jobs, reconciling its own, purging kept rows, pruning silent workers, keeping
 * event partitions ready ahead of the appends.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { exhaustMap, from, Subject, takeUntil, timer } from 'rxjs';
import { withDeadline } from '../db/deadline.js';
import { LOCK_NOT_AVAILABLE, sqlState } from '../db/retryable.js';
import { createPartitionsAhead } from '../events/partitioning.js';
import { releaseDeadWorkersRuns } from '../jobs/abandoned.js';
import { pruneHistory, pruneWorkers, purgeSucceeded } from '../jobs/maintenance.js';
import { type RecoveredJob, recoverStalledJobs } from '../jobs/recover.js';
import type { WorkerSettings } from './options.js';
import { heartbeat, otherTasks, registerWorker, type WorkerInfo } from './workersTable.js';

export interface UpkeepDeps {
  control: pg.Pool;
  schema: string;
  log: Logger;
  info: WorkerInfo;
  settings: WorkerSettings;
  dbNow: () => Date | null;
  /** Recovery put jobs back to `todo`: claim. */
  onRecovered: () => void;
  /** Ask the claim loop to reconcile this worker's own jobs. */
  reconcile: () => void;
  /** Tasks other workers registered that this one does not know: it skips their jobs. */
  onOtherTasks: (names: string[]) => void;
  /**
   * The claims held and unfinished (buffered, collected for a batch, running), asked about
   * with each beat: cancelled ones come back through onCancelled.
   */
  claims: () => { id: string; attempt: number }[];
  /** Every job the worker holds, abandoned runs included: its other abandoned_runs rows are swept. */
  held: () => string[];
  /** Claims (`<id>:<attempt>`) an operator cancelled while this worker held them. */
  onCancelled: (claims: string[]) => void;
  /** Whether any queue has limits, as of each beat. */
  onLimits: (limited: boolean) => void;
}

export interface Upkeep {
  start(): void;
  /**
   * Ends the maintenance passes (at the start of shutdown: no recovering while we stop).
   * Resolves when a pass in flight has finished: the pools must not close under it.
   */
  stopMaintenance(): Promise<void>;
  /** Ends the heartbeat and waits for a beat in flight, so none lands after unregistering. */
  stopHeartbeat(): Promise<void>;
}

export function makeUpkeep(deps: UpkeepDeps): Upkeep {
  const { control, schema, log, info, settings, dbNow } = deps;
  // A beat is one tiny UPDATE: it gets a third of the stall timeout, without the floor of the
  // other control statements, so a beat hung on a half-open connection is abandoned and the
  // next one sent while the other workers still see this one as alive, whatever the stall
  // timeout (with 1 s and the 2 s floor, a hung beat got a live worker's jobs run again).
  const beatDb = withDeadline(control, Math.max(50, Math.round(settings.stallTimeoutMs / 3)));
  const maintenanceStopped$ = new Subject<void>();
  const heartbeatStopped$ = new Subject<void>();
  let heartbeatStopped = false;
  let beating: Promise<void> | undefined;
  // The database's time since which our beats have succeeded without a break, and when
  // (monotonic, local) the last one succeeded: recovery judges others only from there.
  let upSince: Date | null = null;
  let lastBeat = Number.NEGATIVE_INFINITY;
  let auditDenialLogged = false;
  let queueingLockWaitLogged = false;

  async function beat(): Promise<void> {
    try {
      const beaten = await heartbeat(
        beatDb,
        schema,
        info.id,
        dbNow(),
        deps.claims(),
        deps.held(),
        settings.stallTimeoutMs / 3,
      );
      if (beaten === null) {
        // Our row is gone. At shutdown that is our own unregister: never insert it again.
        if (heartbeatStopped) return;
        log.warn('worker row was pruned while we were unreachable; registering again');
        await registerWorker(control, schema, info, dbNow());
        upSince = null; // we were away long enough to be pruned: start the window again
        return;
      }
      upSince ??= beaten.at;
      lastBeat = performance.now();
      if (beaten.cancelled.length > 0) deps.onCancelled(beaten.cancelled);
      deps.onLimits(beaten.limited);
    } catch (error) {
      upSince = null;
      throw error;
    }
  }

  /** Others' dirty jobs: those of a worker gone silent go back to `todo` or the dead letter. */
  async function recover(): Promise<void> {
    let recovered: RecoveredJob[];
    try {
      recovered = await recoverStalledJobs(control, schema, dbNow(), info.id, upSince);
      queueingLockWaitLogged = false;
      // A dead worker's abandoned runs (handlers that ignored their signal) died with it.
      await releaseDeadWorkersRuns(control, schema, dbNow(), info.id, upSince);
    } catch (error) {
      if (sqlState(error) !== LOCK_NOT_AVAILABLE) throw error;
      // An open transaction holds the queueing lock one of them needs (recoverStalledJobs):
      // recover the others now, those on a later pass. Said once per episode, not per pass.
      if (!queueingLockWaitLogged) {
        queueingLockWaitLogged = true;
        log.warn(
          'recovery of dirty jobs with a queueing lock waits for a transaction that deferred a job with the same lock; recovering the others meanwhile',
        );
      }
      recovered = await recoverStalledJobs(control, schema, dbNow(), info.id, upSince, false);
    }
    for (const job of recovered) {
      log.warn(
        { jobId: job.id, task: job.task, deadWorker: job.worker, reason: job.reason, status: job.status },
        job.reason === 'retry'
          ? 'recovered a dirty job (its worker stopped heartbeating): back to todo'
          : `recovered a dirty job (its worker stopped heartbeating): failed (${job.reason})`,
      );
    }
    if (recovered.length > 0) deps.onRecovered();
  }

  async function pruneTables(): Promise<void> {
    const pruned = await pruneHistory(control, schema, dbNow(), settings.historyRetention);
    if (pruned.auditLog === 'denied' && !auditDenialLogged) {
      auditDenialLogged = true;
      log.info(
        'audit_log is not pruned: this role may not delete from it (ops/sql/roles.sql); its owner can',
      );
    }
  }

  // The pass in flight. Found by ops/chaos/faults.ts: a pass still running when the worker
  // stopped went on into closed pools ("Cannot use a pool after calling end on the pool").
  let maintaining: Promise<void> = Promise.resolve();

  /** Each step on its own: one that fails (and is logged) does not hold the others back. */
  async function maintain(): Promise<void> {
    deps.reconcile();
    await otherTasks(control, schema, info.tasks)
      .then(deps.onOtherTasks)
      .catch(logFailure('reading the registered tasks'));
    // Recovering others needs a fresh beat of our own, and a stall window's worth of
    // being connected (recoverStalledJobs): a worker cut off from the database must not
    // judge the others by their stale heartbeats.
    if (upSince !== null && performance.now() - lastBeat < 2 * settings.heartbeatIntervalMs) {
      await recover().catch(logFailure('recovering dirty jobs'));
    }
    await purgeSucceeded(control, schema, dbNow()).catch(logFailure('purging kept succeeded jobs'));
    await pruneWorkers(control, schema, dbNow()).catch(logFailure('pruning silent workers'));
    await pruneTables().catch(logFailure('pruning history tables'));
    await createPartitionsAhead(control, schema)
      .then((created) => {
        if (created.length > 0)
          log.info({ partitions: created }, 'created event partitions ahead of the appends');
      })
      .catch(partitionFailure);
  }

  // A lock timeout (a long read holds the default partition) is routine: the next pass
  // has time enough, partitions are made two ahead. Anything else is said once.
  let partitionFailureLogged = false;
  function partitionFailure(error: unknown): void {
    if (sqlState(error) === LOCK_NOT_AVAILABLE || partitionFailureLogged) return;
    partitionFailureLogged = true;
    logFailure('creating event partitions ahead')(error);
  }

  const logFailure = (what: string) => (error: unknown) => {
    log.warn({ err: error }, `${what} failed; will try again`);
  };

  return {
    start() {
      // exhaustMap: a beat or pass still running when the next tick comes is not doubled
      // up; the tick is dropped. Beats go on during shutdown (until stopHeartbeat) so
      // running handlers are not mistaken for dead ones.
      timer(0, settings.heartbeatIntervalMs)
        .pipe(
          exhaustMap(() => {
            beating = beat().catch(logFailure('heartbeat'));
            return from(beating);
          }),
          takeUntil(heartbeatStopped$),
        )
        .subscribe();
      timer(0, settings.recoverIntervalMs)
        .pipe(
          exhaustMap(() => {
            maintaining = maintain();
            return from(maintaining);
          }),
          takeUntil(maintenanceStopped$),
        )
        .subscribe();
    },
    stopMaintenance() {
      maintenanceStopped$.next();
      return maintaining;
    },
    async stopHeartbeat() {
      heartbeatStopped = true;
      heartbeatStopped$.next();
      await beating;
    },
  };
}
