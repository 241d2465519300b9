/** Worker settings, checked once at start. */

import { type DurationInput, toMilliseconds } from '../duration.js';
import { ValidationError } from '../errors.js';
import {
  type HistoryRetention,
  type HistoryRetentionOptions,
  resolveHistoryRetention,
} from '../jobs/maintenance.js';
import { checkInteger, checkQueue } from '../jobs/validate.js';

export interface WorkerOptions {
  /** Queues to run (default: every queue). */
  queues?: string[];
  /** Handlers running at once (default 10). */
  concurrency?: number;
  /** Jobs claimed per round trip at most (default 1000; fewer unless jobs are quick, see prefetchWindow). */
  batchSize?: number;
  /** Claim ahead enough quick jobs to keep slots busy for this long (default 50 ms). */
  prefetchWindow?: DurationInput;
  /** Fallback when a NOTIFY is missed, and for scheduled jobs (default 1 s). */
  pollInterval?: DurationInput;
  /** A doing job whose worker is silent this long is dirty (default 30 s). */
  stallTimeout?: DurationInput;
  /** Default stallTimeout / 6. */
  heartbeatInterval?: DurationInput;
  /** How often dirty jobs are looked for (default: heartbeatInterval). */
  recoverInterval?: DurationInput;
  /** On shutdown, running handlers get this long (default 30 s). */
  shutdownTimeout?: DurationInput;
  /** How long maintenance keeps task_stats, schedule_ticks and audit_log rows (default 30, 7 and 90 days). */
  historyRetention?: HistoryRetentionOptions;
  /**
   * Dead rows in the jobs table (its statistics' n_dead_tup, and at least a tenth of the
   * live rows) at which a busy worker runs VACUUM on it (default 200,000); false never does
   * (docs/operations.md, "Vacuum during bursts").
   */
  vacuumJobsAfter?: number | false;
  /** Observer called once per finished job (metrics); jobs returned at shutdown are not reported. */
  onJobFinished?: (event: JobFinished) => void;
}

export interface JobFinished {
  task: string;
  outcome: 'succeeded' | 'retried' | 'failed';
  durationMs: number;
}

export interface WorkerSettings {
  queues: string[] | null;
  concurrency: number;
  batchSize: number;
  prefetchWindowMs: number;
  pollIntervalMs: number;
  stallTimeoutMs: number;
  heartbeatIntervalMs: number;
  recoverIntervalMs: number;
  shutdownTimeoutMs: number;
  historyRetention: HistoryRetention;
  /** null: the worker never vacuums the jobs table. */
  vacuumJobsAfter: number | null;
}

export function resolveWorkerOptions(options: WorkerOptions): WorkerSettings {
  if (options.queues !== undefined && (!Array.isArray(options.queues) || options.queues.length === 0)) {
    throw new ValidationError(
      `queues ${JSON.stringify(options.queues)} is invalid: expected a non-empty array of queue names, or leave it out for every queue`,
    );
  }
  const queues = options.queues ? options.queues.map((queue) => checkQueue(queue)) : null;
  const stallTimeoutMs = toMilliseconds(options.stallTimeout ?? 30_000, 'stallTimeout');
  const heartbeatIntervalMs = toMilliseconds(
    options.heartbeatInterval ?? stallTimeoutMs / 6,
    'heartbeatInterval',
  );
  if (heartbeatIntervalMs >= stallTimeoutMs || heartbeatIntervalMs <= 0) {
    throw new ValidationError(
      `heartbeatInterval (${heartbeatIntervalMs} ms) is invalid: expected more than 0 and well under stallTimeout (${stallTimeoutMs} ms), or the worker would look dead between beats`,
    );
  }
  const positive = (value: DurationInput | undefined, fallback: number, what: string) => {
    const ms = toMilliseconds(value ?? fallback, what);
    if (ms <= 0) throw new ValidationError(`${what} is invalid: expected a duration above 0`);
    return ms;
  };
  return {
    queues,
    concurrency: checkInteger(options.concurrency ?? 10, 'concurrency', 1, 10_000),
    batchSize: checkInteger(options.batchSize ?? 1_000, 'batchSize', 1, 10_000),
    prefetchWindowMs: toMilliseconds(options.prefetchWindow ?? 50, 'prefetchWindow'),
    pollIntervalMs: positive(options.pollInterval, 1_000, 'pollInterval'),
    stallTimeoutMs,
    heartbeatIntervalMs,
    recoverIntervalMs: positive(options.recoverInterval, heartbeatIntervalMs, 'recoverInterval'),
    shutdownTimeoutMs: toMilliseconds(options.shutdownTimeout ?? 30_000, 'shutdownTimeout'),
    historyRetention: resolveHistoryRetention(options.historyRetention),
    vacuumJobsAfter:
      options.vacuumJobsAfter === false
        ? null
        : checkInteger(options.vacuumJobsAfter ?? 200_000, 'vacuumJobsAfter', 1, Number.MAX_SAFE_INTEGER),
  };
}
