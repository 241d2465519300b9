/**
 * The worker's batch tasks (docs/batches.md): jobs gathered into batches (batches.ts), each
 * batch run in one slot (runBatch.ts), and each job's outcome handed to the outcome writer
 * on its own — a success completed, a failure retried or dead-lettered by its own attempts.
 * worker.ts calls in at a few points: claimed jobs, room, slots, held jobs, shutdown.
 */
import type { Logger } from 'pino';
import type { ClaimedJob } from '../jobs/claim.js';
import { asRateLimited } from '../jobs/rateLimited.js';
import type { ResolvedTask } from '../jobs/task.js';
import { makeBatches } from './batches.js';
import type { JobFinished } from './options.js';
import type { makeOutcomeWriter } from './outcomes.js';
import { type BatchRunOutcome, RunningBatch } from './runBatch.js';
import { keepForMs } from './runJob.js';

export interface BatchRunnerDeps {
  tasks: ReadonlyMap<string, ResolvedTask>;
  log: Logger;
  outcomes: Pick<
    ReturnType<typeof makeOutcomeWriter>,
    'complete' | 'fail' | 'returnUnstarted' | 'postponeJob'
  >;
  /** The task's retry decision for a failed attempt: wait in ms, or null for the dead letter. */
  retryIn: (job: ClaimedJob, task: ResolvedTask, error: unknown) => number | null;
  observe: (event: JobFinished) => void;
  /** A batch became ready, or a running one finished: start what fits. */
  pump: () => void;
  /** Records runs abandoned at a batch's timeout (src/jobs/abandoned.ts). */
  holdAbandoned: (jobs: ClaimedJob[]) => Promise<void>;
  /** Frees the abandoned runs of a call that returned. */
  releaseAbandoned: (jobs: ClaimedJob[]) => void;
}

export type BatchRunner = ReturnType<typeof makeBatchRunner>;

export function makeBatchRunner(deps: BatchRunnerDeps) {
  const { log, outcomes, retryIn, observe, pump } = deps;
  const batches = makeBatches(deps.tasks, pump);
  const running = new Set<RunningBatch>();
  // Settled batches whose abandoned runs are released when the call returns.
  const releasing = new Set<RunningBatch>();

  /**
   * Each job of a batch settles on its own. Duration: the call's, shared equally among its
   * jobs, so task_stats sums stay the time spent.
   */
  function finish(run: RunningBatch, outcome: BatchRunOutcome): void {
    if (run.settled) return; // already returned at shutdown
    run.settled = true;
    running.delete(run);
    // A call given up on at its timeout holds every job's slot, one cancelled under it that
    // job's, until it returns.
    if (run.timedOut || run.cancelled.length > 0) {
      releasing.add(run);
      void run.handlerSettled.then(() => {
        releasing.delete(run);
        deps.releaseAbandoned(run.timedOut ? run.jobs : run.cancelled);
      });
    }
    for (const [i, job] of run.jobs.entries()) {
      if (run.superseded.has(job.id)) continue; // a newer claim of it settles it
      if (outcome.kind === 'interrupted') {
        outcomes.returnUnstarted(job);
        continue;
      }
      const result = outcome.results[i]!;
      const durationMs = outcome.durationMs / run.jobs.length;
      if (result.ok) {
        // An awaited job (deferAndWait) is kept for its waiter; a batch has no per-job result.
        outcomes.complete(job, run.task, durationMs, keepForMs(job, run.task));
        observe({ task: job.task, outcome: 'succeeded', durationMs });
        continue;
      }
      // Found in review: a batch's RateLimited (thrown for the whole batch, or one job's
      // error) was an ordinary failure — an attempt counted, no pause, the dead letter in
      // the end. The downstream said wait: as for a plain job (docs/limits.md).
      const limited = asRateLimited(result.error);
      if (limited !== null) {
        outcomes.postponeJob(job, limited.retryAt);
      } else {
        const wait = retryIn(job, run.task, result.error);
        outcomes.fail(job, result.error, wait);
        observe({ task: job.task, outcome: wait === null ? 'failed' : 'retried', durationMs });
      }
    }
    pump();
  }

  return {
    /** Names of the batch tasks: empty when there are none, and then nothing else here is called per job. */
    names: batches.names,
    add: batches.add,
    /** Running batches: each takes one slot. */
    running: () => running.size,
    /**
     * What the next claim takes, given the worker's room for jobs (free slots and prefetch,
     * less its buffer). Two kinds of claim, taken in turn while both have room:
     *
     * - for the batches being collected (`batchesOnly`: the claim skips every task that is not
     *   a batch task), as many as they can still take — while there is a slot for each batch
     *   collected or ready, so a worker whose slots are all taken does not hoard jobs for
     *   batches that could not run yet;
     * - for the rest, the room for jobs less a slot per ready batch. A batch still being
     *   collected holds no slot: jobs of other tasks run meanwhile.
     *
     * Found in review: one claim sized for both (room for jobs plus the batches' open room)
     * filled the open room with whatever was due first — with one job of a `size: 1000`
     * task collecting, a concurrency-1 worker claimed all 40 waiting jobs of a slow plain
     * task and held them `doing`, out of other workers' reach
     * (test/worker/batches.test.ts, "does not hoard").
     */
    claim(jobRoom: number, lastFilledBatches: boolean): { limit: number; batchesOnly: boolean } {
      const open = batches.openRoom();
      if (!lastFilledBatches && open > 0 && jobRoom - batches.waitingSlots() >= 0) {
        return { limit: open, batchesOnly: true };
      }
      return { limit: jobRoom - batches.readyCount(), batchesOnly: false };
    },
    /** Starts ready batches in at most `free` slots. */
    start(free: number): void {
      for (let started = 0; started < free; started += 1) {
        const batch = batches.next();
        if (!batch) return;
        const run = new RunningBatch(batch.jobs, batch.task, log, deps.holdAbandoned);
        running.add(run);
        void run.outcome
          .then((outcome) => finish(run, outcome))
          .catch((error) => {
            // Never expected; the jobs are left to reconciling, which returns them to todo.
            log.error({ err: error, task: batch.task.name }, 'could not hand a batch outcome to the writer');
          });
      }
    },
    /** Every claim held: collected, ready or running. */
    held(): ClaimedJob[] {
      const jobs = batches.waiting();
      for (const run of running) jobs.push(...run.jobs);
      return jobs;
    },
    /**
     * An operator cancelled this claim while it waits (collected or ready) for its batch to
     * run: it is dropped, never handed to the handler. Returns whether it was waiting here.
     * A job of a batch already running is left to the call (its completion finds the row
     * `cancelled` and changes nothing): aborting the call would abort the batch's other jobs.
     */
    dropCancelled(id: string, attempt: number): boolean {
      return batches.drop(id, attempt);
    },
    /**
     * A job of a batch running now was cancelled: the call goes on, and the job's abandoned
     * run (the cancel recorded it) goes when the call returns. Whether it was one, or one
     * whose release is already due when its settled call returns (a beat sent before the
     * batch settled may report its cancel again: released once).
     */
    cancelledWhileRunning(id: string, attempt: number): boolean {
      const matches = (j: ClaimedJob) => j.id === id && j.attempts === attempt;
      for (const run of running) {
        const job = run.jobs.find(matches);
        if (job && !run.settled) {
          // Once: the NOTIFY and every beat while the call runs report the same cancel.
          if (!run.cancelled.includes(job)) run.cancelled.push(job);
          return true;
        }
      }
      for (const run of releasing) if ((run.timedOut ? run.jobs : run.cancelled).some(matches)) return true;
      return false;
    },
    /** A job claimed again (it had been recovered away): older copies are dropped, or their outcome is. */
    supersede(id: string): void {
      batches.drop(id);
      for (const run of running) if (run.jobs.some((job) => job.id === id)) run.superseded.add(id);
    },
    /** Shutdown, first step: jobs not running yet, to go back to `todo`. */
    takeWaiting: () => batches.takeAll(),
    /** Shutdown: aborts running batches; resolves when they settle. */
    abortRunning(reason: unknown): Promise<unknown> {
      for (const run of running) {
        run.shuttingDown = true;
        run.abort(reason);
      }
      return Promise.all([...running].map((run) => run.outcome));
    },
    /** Shutdown, past the deadline: the jobs of batches still running go back (no transaction to end). */
    returnUnfinished(): number {
      const unfinished = [...running];
      running.clear();
      for (const run of unfinished) {
        run.settled = true;
        for (const job of run.jobs) if (!run.superseded.has(job.id)) outcomes.returnUnstarted(job);
      }
      return unfinished.length;
    },
  };
}
