/**
 * The `app.jobs` API object (`outbatch jobs ...`, scripts): checks what an operator asks
 * for, then reads through inspect.ts and writes through operate.ts; no SQL of its own.
 */
import type { Logger } from 'pino';
import { currentActor } from '../audit.js';
import type { Queryable } from '../db/queryable.js';
import { ValidationError } from '../errors.js';
import {
  type JobDetail,
  type JobState,
  type JobSummary,
  jobStats,
  jobsWithoutWorker,
  listJobs,
  STATES,
  showJob,
  type TaskStats,
  type TaskWithoutWorker,
} from './inspect.js';
import {
  cancelJobs,
  deleteJobs,
  explainSkipped,
  type FailedFilter,
  previewRetry,
  type RetryPreview,
  retryJobs,
} from './operate.js';
import { toDate } from './validate.js';

export interface ActionResult {
  /** Ids that changed. */
  done: string[];
  /** Ids left alone, with the reason. */
  skipped: { id: string; reason: string }[];
}

/** `retry --failed`: by task, error text (case-insensitive substring), and when they failed. */
export interface FailedSelection {
  failed: true;
  task?: string;
  errorContains?: string;
  since?: Date | string;
  until?: Date | string;
}

/** `stats()`: a task's counts, and how many of its due jobs no live worker knows. */
export interface JobStats extends TaskStats {
  withoutWorker: number;
}

export interface JobControl {
  list(filter?: { status?: string; task?: string; queue?: string; limit?: number }): Promise<JobSummary[]>;
  show(id: string | number): Promise<JobDetail | undefined>;
  /**
   * Per queueing lock only the newest selected job is retried, and none while a job with
   * that lock waits; the others are in `skipped` with the reason.
   */
  retry(selection: { ids: (string | number)[] } | FailedSelection): Promise<ActionResult>;
  /** Per task, how many failed jobs `retry` would take with this filter and how many it would skip; changes nothing. */
  previewRetry(selection: FailedSelection): Promise<RetryPreview[]>;
  /**
   * Waiting and running jobs become `cancelled`; a running one's handler is aborted and its
   * transaction rolled back by its worker (docs/lifecycle.md). Others are skipped, with why.
   */
  cancel(ids: (string | number)[]): Promise<ActionResult>;
  delete(ids: (string | number)[]): Promise<ActionResult>;
  stats(): Promise<JobStats[]>;
  /** Per task, the due jobs no live worker knows (none while an older worker that claims every task lives). */
  withoutWorker(): Promise<TaskWithoutWorker[]>;
}

function failedFilter(selection: FailedSelection): FailedFilter {
  const text = (value: unknown, name: string) => {
    if (value !== undefined && (typeof value !== 'string' || value.length === 0)) {
      throw new ValidationError(`${name} must be a non-empty string`);
    }
    return value as string | undefined;
  };
  return {
    failed: true,
    task: text(selection.task, 'task'),
    errorContains: text(selection.errorContains, 'errorContains'),
    since: selection.since === undefined ? undefined : toDate(selection.since, 'since'),
    until: selection.until === undefined ? undefined : toDate(selection.until, 'until'),
  };
}

export function checkJobId(id: unknown): string {
  const text = typeof id === 'number' ? String(id) : id;
  if (typeof text !== 'string' || !/^[1-9]\d{0,18}$/.test(text) || BigInt(text) > 9223372036854775807n) {
    throw new ValidationError(
      `job id ${JSON.stringify(id)} is invalid: expected a positive integer such as 42`,
    );
  }
  return text;
}

function checkIds(ids: unknown): string[] {
  if (!Array.isArray(ids) || ids.length === 0) {
    throw new ValidationError('no job ids given: expected one or more positive integers');
  }
  return [...new Set(ids.map(checkJobId))];
}

export function checkState(status: unknown): JobState {
  if (!STATES.includes(status as JobState)) {
    throw new ValidationError(
      `status ${JSON.stringify(status)} is invalid: expected one of ${STATES.join(', ')}`,
    );
  }
  return status as JobState;
}

export function makeJobControl(deps: {
  schema: string;
  log: Logger;
  pool: () => Promise<Queryable>;
}): JobControl {
  const { schema, log } = deps;

  /** `explained`: skipped ids whose reason is already known (the queueing lock, from the retry). */
  async function withSkipped(
    ids: string[],
    done: string[],
    explained: ActionResult['skipped'] = [],
  ): Promise<ActionResult> {
    const known = new Map(explained.map((skip) => [skip.id, skip.reason]));
    const doneSet = new Set(done);
    const left = ids.filter((id) => !doneSet.has(id) && !known.has(id));
    const reasons = await explainSkipped(await deps.pool(), schema, left);
    for (const id of left) known.set(id, reasons.get(id) ?? 'unknown');
    return {
      done,
      skipped: ids.filter((id) => known.has(id)).map((id) => ({ id, reason: known.get(id)! })),
    };
  }

  return {
    async list(filter = {}) {
      const limit = filter.limit ?? 100;
      if (!Number.isInteger(limit) || limit < 1 || limit > 100_000) {
        throw new ValidationError(
          `limit ${JSON.stringify(filter.limit)} is invalid: expected an integer from 1 to 100000`,
        );
      }
      return listJobs(await deps.pool(), schema, {
        state: filter.status === undefined ? undefined : checkState(filter.status),
        task: filter.task,
        queue: filter.queue,
        limit,
      });
    },
    async show(id) {
      return showJob(await deps.pool(), schema, checkJobId(id));
    },
    async retry(selection) {
      if ('ids' in selection) {
        const ids = checkIds(selection.ids);
        const { retried, skipped } = await retryJobs(await deps.pool(), schema, { ids }, currentActor());
        log.info({ jobs: retried, skipped: skipped.length }, `retried ${retried.length} job(s)`);
        return withSkipped(ids, retried, skipped);
      }
      const { retried, skipped } = await retryJobs(
        await deps.pool(),
        schema,
        failedFilter(selection),
        currentActor(),
      );
      log.info(
        { count: retried.length, skipped: skipped.length, task: selection.task },
        `retried ${retried.length} failed job(s)`,
      );
      return { done: retried, skipped };
    },
    async previewRetry(selection) {
      return previewRetry(await deps.pool(), schema, failedFilter(selection));
    },
    async cancel(ids) {
      const checked = checkIds(ids);
      return withSkipped(checked, await cancelJobs(await deps.pool(), schema, checked, currentActor()));
    },
    async delete(ids) {
      const checked = checkIds(ids);
      return withSkipped(checked, await deleteJobs(await deps.pool(), schema, checked, currentActor()));
    },
    async stats() {
      const db = await deps.pool();
      const [stats, orphaned] = await Promise.all([jobStats(db, schema), jobsWithoutWorker(db, schema)]);
      const waiting = new Map(orphaned.map((row) => [row.task, row.waiting]));
      return stats.map((row) => ({ ...row, withoutWorker: waiting.get(row.task) ?? 0 }));
    },
    async withoutWorker() {
      return jobsWithoutWorker(await deps.pool(), schema);
    },
  };
}
