/**
 * The worker's claim slot: one claim (or reconcile) in flight at a time, started by a
 * wake-up — a NOTIFY, a poll tick, a freed lock, a known due time — or by a full claim
 * (a backlog). A wake-up that arrives while the slot is busy is remembered (`pendingWake`)
 * and claims once more, so a NOTIFY is never lost to a claim that started before its commit.
 *
 * Reconciling shares the slot, because it must never overlap a claim: it returns to `todo`
 * the jobs `doing` for this worker that the worker does not hold, and a claim in flight
 * holds jobs the worker does not know of yet.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { failureKind, isRetryable } from '../db/retryable.js';
import { type ClaimedJob, claimJobs } from '../jobs/claim.js';
import { claimLimitedJobs } from '../jobs/claimLimited.js';
import { findOrphans, releaseJobs } from '../jobs/release.js';
import { makeDueTimer } from './dueTimer.js';
import type { WorkerSettings } from './options.js';
import { setWorkerIdle } from './workersTable.js';

export interface ClaimLoopDeps {
  control: pg.Pool;
  schema: string;
  log: Logger;
  workerId: string;
  settings: WorkerSettings;
  /** Tasks not to claim: those the worker found it cannot run. */
  skipTasks: () => string[];
  dbNow: () => Date | null;
  /** How many more jobs the worker wants in hand now. */
  room: () => number;
  /** Every job the worker holds: buffered, running, or with its outcome not yet written. */
  held: () => string[];
  onClaimed: (jobs: ClaimedJob[]) => void;
}

export interface ClaimLoop {
  /** Claim now, or as soon as the slot is free. */
  wake(): void;
  wakeIn(ms: number): void;
  /** Reconcile before the next claim. */
  reconcile(): void;
  /** Claims may begin (the worker is registered). */
  open(): void;
  /** The last claim came back full, or a wake-up waits: worth claiming again when room frees. */
  wantsMore(): boolean;
  /**
   * Some queue has limits (or none has any longer): claims go through claimLimitedJobs
   * while it does. Told by each heartbeat, and by the worker when it pauses a queue.
   */
  setLimited(limited: boolean): void;
  limited(): boolean;
  /** Stops claiming; resolves once the slot is free. */
  close(): Promise<void>;
  /**
   * At shutdown, after close() and once the outcomes are written: returns to `todo`
   * (uncounted) every job still `doing` for this worker that it does not hold — a claim
   * whose reply was lost just before the stop would otherwise go to recovery, which
   * counts an attempt that never ran. One try: on failure recovery takes the jobs.
   */
  sweep(): Promise<void>;
}

export function makeClaimLoop(deps: ClaimLoopDeps): ClaimLoop {
  const { control, schema, log, workerId, settings, dbNow } = deps;
  let slot: Promise<void> | undefined;
  let pendingWake = false;
  let reconcileWanted = false;
  let backlog = false; // the last claim came back full: more is waiting
  let idle = true; // as published in the workers table (registered idle)
  let opened = false;
  let closed = false;
  let failures = 0; // claims or reconciles failed in a row
  // Until the first heartbeat says otherwise the plain claim runs: it skips limited queues
  // (claim.ts), so a limit is never exceeded; their jobs wait for the beat.
  let limited = false;

  const dueTimer = makeDueTimer(settings.pollIntervalMs, () => wake());

  function wake(): void {
    pendingWake = true;
    next();
  }

  function next(): void {
    if (slot || closed || !opened) return;
    let work: Promise<void>;
    if (reconcileWanted) {
      reconcileWanted = false;
      work = reconcileOnce();
    } else {
      const limit = Math.min(settings.batchSize, Math.max(0, deps.room()));
      if (limit === 0) return;
      pendingWake = false;
      work = claimOnce(limit);
    }
    slot = work.finally(() => {
      slot = undefined;
      // A wanted reconcile alone waits for the next wake-up: after a failure that is the
      // retry timer, so an unreachable server is not asked in a loop.
      if (pendingWake || backlog) next();
    });
  }

  /** After a failure: try again soon, backing off from 50 ms (the poll tick takes over beyond it). */
  function retrySoon(what: string, error: unknown): void {
    failures += 1;
    const retryInMs = Math.min(50 * 2 ** (failures - 1), settings.pollIntervalMs);
    log.warn({ err: error, retryable: isRetryable(error), retryInMs }, `${what} failed; will retry`);
    backlog = false;
    pendingWake = false;
    dueTimer.wakeIn(retryInMs);
  }

  async function claimOnce(limit: number): Promise<void> {
    let claimed: ClaimedJob[];
    try {
      const request = { queues: settings.queues, skipTasks: deps.skipTasks(), limit, workerId, now: dbNow() };
      claimed = limited
        ? await claimLimitedJobs(control, schema, request)
        : await claimJobs(control, schema, request);
    } catch (error) {
      // Refused (a lock race on jobs_lock_doing): nothing was claimed. Lost reply: the
      // claim may have committed, leaving jobs `doing` for us that we do not know of —
      // reconcile before the next claim.
      reconcileWanted = true;
      retrySoon('claiming jobs', error);
      return;
    }
    failures = 0;
    backlog = claimed.length === limit;
    deps.onClaimed(claimed);
    if (backlog === idle) {
      // Busy workers need no NOTIFY, and sparing it keeps deferring transactions from
      // committing one at a time (schema/020). On becoming idle, claim once more after
      // saying so, or a job committed in between would wait for the poll.
      idle = !backlog;
      try {
        await setWorkerIdle(control, schema, workerId, idle);
      } catch (error) {
        log.warn({ err: error }, 'could not publish the idle flag; polling covers it');
      }
      if (idle) pendingWake = true;
    }
  }

  async function reconcileOnce(): Promise<void> {
    try {
      // Nothing may change these rows between the two statements: they are ours, and no
      // claim of ours is in flight (the slot is this one).
      const orphans = await findOrphans(control, schema, workerId, deps.held());
      const { released, superseded } = await releaseJobs(control, schema, workerId, orphans);
      failures = 0;
      pendingWake = true; // the claim the reconcile went before
      if (released + superseded > 0) {
        log.warn(
          { released, superseded },
          `reconciled: ${released + superseded} job(s) marked doing for this worker that it was not running (a claim whose reply was lost) went back to todo without counting the attempt`,
        );
      }
    } catch (error) {
      if (failureKind(error) === 'refused') {
        // Asking again at once would be refused again, and claims must not wait behind
        // it: the next maintenance pass asks again.
        log.error({ err: error }, 'reconciling claimed jobs was refused; claiming goes on');
        pendingWake = true;
        return;
      }
      // Reply lost: it may have run; running it again is harmless. It is tried again
      // before the next claim.
      reconcileWanted = true;
      retrySoon('reconciling claimed jobs', error);
    }
  }

  return {
    wake,
    wakeIn(ms) {
      if (!closed) dueTimer.wakeIn(ms);
    },
    reconcile() {
      reconcileWanted = true;
      next();
    },
    open() {
      opened = true;
      wake();
    },
    wantsMore: () => backlog || pendingWake,
    setLimited(value) {
      if (value === limited) return;
      limited = value;
      log.info({ limited }, limited ? 'queue limits exist: claiming within them' : 'no queue limits left');
      if (limited) wake();
    },
    limited: () => limited,
    async close() {
      closed = true;
      dueTimer.clear();
      while (slot) await slot;
    },
    async sweep() {
      try {
        const orphans = await findOrphans(control, schema, workerId, deps.held());
        if (orphans.length === 0) return;
        const { released, superseded } = await releaseJobs(control, schema, workerId, orphans);
        log.warn(
          { released, superseded },
          `reconciled at shutdown: ${released + superseded} job(s) marked doing for this worker that it never ran (a claim whose reply was lost) went back to todo without counting the attempt`,
        );
      } catch (error) {
        log.warn({ err: error }, 'reconciling at shutdown failed; recovery takes any job left doing');
      }
    },
  };
}
