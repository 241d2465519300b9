/**
 * Where a worker gathers the claimed jobs of batch tasks (docs/batches.md) until they run.
 * Per task, jobs collect in claim order; `batch.size` of them make a batch at once, and a
 * batch that has not filled within `batch.maxWait` of its first job is ready with what it
 * has. Ready batches wait for a slot like buffered jobs: a running batch takes one slot.
 *
 * Room (what the worker claims for batches) is batchRunner.ts's business; this file only
 * reports the slots batches will take and the room of the batches being collected.
 *
 * No batch task registered: the worker calls nothing here per job; it checks `names.size`
 * (a Set's size) per claimed job and per pump. Measured with ops/bench/jobs.ts (20,000 no-op
 * jobs, outbatch only, two runs each of the code before and after, on the shared two-core
 * machine): concurrency 10, 12,357 and 9,572 jobs/s before, 10,554 and 10,143 after;
 * concurrency 1, 10,240 and 12,275 before, 13,509 and 11,575 after: no difference beyond
 * the machine's noise.
 */
import type { ClaimedJob } from '../jobs/claim.js';
import type { ResolvedBatch, ResolvedTask } from '../jobs/task.js';

type BatchTask = ResolvedTask & { batch: ResolvedBatch };

export interface ReadyBatch {
  task: BatchTask;
  jobs: ClaimedJob[];
}

interface Collecting {
  jobs: ClaimedJob[];
  timer: NodeJS.Timeout;
}

export interface Batches {
  /** Names of the batch tasks (empty when there are none). */
  readonly names: ReadonlySet<string>;
  /** Takes a claimed job of a batch task. */
  add(job: ClaimedJob): void;
  /** The next ready batch, oldest first. */
  next(): ReadyBatch | undefined;
  /** Slots the batches being collected or ready will take. */
  waitingSlots(): number;
  /** Batches ready to run, waiting for a slot. */
  readyCount(): number;
  /** More jobs the batches being collected can take. */
  openRoom(): number;
  /** Every claim collected or ready (not running). */
  waiting(): ClaimedJob[];
  /**
   * Drops a job still waiting here: every copy of it, or only the claim with `attempt` (a
   * cancel). A job claimed again (it had been recovered away) drops its older copy.
   * Returns whether one was dropped.
   */
  drop(id: string, attempt?: number): boolean;
  /** At shutdown: every job collected or ready, to go back to `todo`; timers cleared. */
  takeAll(): ClaimedJob[];
}

export function makeBatches(tasks: ReadonlyMap<string, ResolvedTask>, onReady: () => void): Batches {
  const byName = new Map<string, BatchTask>();
  for (const task of tasks.values()) if (task.batch) byName.set(task.name, task as BatchTask);
  const names = new Set(byName.keys());
  const collecting = new Map<string, Collecting>();
  const ready: ReadyBatch[] = [];

  function close(name: string): void {
    const group = collecting.get(name);
    if (!group) return;
    clearTimeout(group.timer);
    collecting.delete(name);
    ready.push({ task: byName.get(name)!, jobs: group.jobs });
  }

  return {
    names,
    add(job) {
      const task = byName.get(job.task)!;
      let group = collecting.get(job.task);
      if (!group) {
        // maxWait 0 still waits for this claim's other jobs: the timer fires after onClaimed.
        const timer = setTimeout(() => {
          close(job.task);
          onReady();
        }, task.batch.maxWaitMs);
        group = { jobs: [], timer };
        collecting.set(job.task, group);
      }
      group.jobs.push(job);
      if (group.jobs.length >= task.batch.size) close(job.task);
    },
    next() {
      // A batch whose every job was dropped (claimed again meanwhile) has nothing to run.
      while (ready.length > 0 && ready[0]!.jobs.length === 0) ready.shift();
      return ready.shift();
    },
    waitingSlots: () => ready.length + collecting.size,
    readyCount: () => ready.length,
    openRoom() {
      let room = 0;
      for (const [name, group] of collecting) room += byName.get(name)!.batch.size - group.jobs.length;
      return room;
    },
    waiting() {
      const jobs: ClaimedJob[] = [];
      for (const group of collecting.values()) jobs.push(...group.jobs);
      for (const batch of ready) jobs.push(...batch.jobs);
      return jobs;
    },
    drop(id, attempt) {
      const matches = (job: ClaimedJob) =>
        job.id === id && (attempt === undefined || job.attempts === attempt);
      let dropped = false;
      const lists = [
        ...[...collecting.values()].map((group) => group.jobs),
        ...ready.map((batch) => batch.jobs),
      ];
      for (const jobs of lists) {
        const at = jobs.findIndex(matches);
        if (at < 0) continue;
        jobs.splice(at, 1);
        dropped = true;
      }
      return dropped;
    },
    takeAll() {
      const jobs: ClaimedJob[] = [];
      for (const group of collecting.values()) {
        clearTimeout(group.timer);
        jobs.push(...group.jobs);
      }
      collecting.clear();
      for (const batch of ready.splice(0)) jobs.push(...batch.jobs);
      return jobs;
    },
  };
}
