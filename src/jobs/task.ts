/**
 * Tasks: a name, options and a handler, registered on the app. `defer` and `deferMany`
 * validate here and enqueue through defer_job(); the worker looks handlers up by name.
 */
import type { Logger } from 'pino';
import type { Queryable } from '../db/queryable.js';
import { type DurationInput, toMilliseconds } from '../duration.js';
import { ValidationError } from '../errors.js';
import type { TraceContext } from '../trace/traceContext.js';
import { type TraceOptions, type Tracing, traceOption } from '../trace/tracing.js';
import { checkSchema, validateWith } from '../typing/check.js';
import type { StandardSchemaV1 } from '../typing/standardSchema.js';
import { checkWaitOptions, type WaitOptions, type WaitSettings } from './await.js';
import { type Backoff, type BackoffOptions, checkBackoff } from './backoff.js';
import {
  type DeferResult,
  deferJob,
  deferJobs,
  type JobSpec,
  ON_CONFLICT_MODES,
  type OnConflict,
} from './defer.js';
import {
  argsToJson,
  checkGroup,
  checkInteger,
  checkLockName,
  checkQueue,
  checkTaskName,
  type TimeInput,
  toDate,
} from './validate.js';

export interface RetryOptions {
  /** Total attempts, the first included (default 5). 1 means never retry. */
  attempts?: number;
  backoff?: BackoffOptions;
  /** Return false to send an error straight to the dead letter (default: retry every error). */
  retryOn?: (error: unknown) => boolean;
}

// biome-ignore lint/suspicious/noExplicitAny: see Handler
export interface TaskOptions<A = any> {
  /** Queue the task's jobs go to (default `default`). */
  queue?: string;
  /** Higher runs first (default 0). */
  priority?: number;
  retry?: RetryOptions;
  /** Abort the handler's signal and fail the attempt after this long (default: no limit). */
  timeout?: DurationInput;
  /** What recovery does with a job whose worker died: `retry` (default; counts an attempt) or `fail`. */
  onStall?: 'retry' | 'fail';
  /** Keep succeeded rows (status `succeeded`) this long instead of deleting them. */
  keepSucceededFor?: DurationInput;
  /** Open `ctx.tx` before the handler runs; it commits together with the job's completion. */
  transaction?: boolean;
  /**
   * A Standard Schema validator (zod, valibot…) for the args, run at every defer of this
   * task from this app: a failure is a ValidationError and nothing is enqueued; the job
   * gets the schema's output. See docs/typing.md.
   */
  schema?: StandardSchemaV1<unknown, A>;
}

/** A batch task's batching: see docs/batches.md. */
export interface BatchOptions {
  /** At most this many jobs per handler call (1-1000). */
  size: number;
  /**
   * How long a worker holding at least one of the task's jobs waits for more to fill the
   * batch before it calls the handler with what it has (default 0: a batch is what one claim
   * brought; at most one hour).
   */
  maxWait?: DurationInput;
}

/** A batch task's options: a task's, with `batch` and without `transaction` (not offered). */
// biome-ignore lint/suspicious/noExplicitAny: see Handler
export interface BatchTaskOptions<A = any> extends Omit<TaskOptions<A>, 'transaction'> {
  batch: BatchOptions;
}

/** One job of a batch, as the batch handler sees it. */
// biome-ignore lint/suspicious/noExplicitAny: see Handler
export interface BatchJob<A = any> extends JobInfo {
  args: A;
}

/** One job's outcome, at the job's place in the batch: success, or a failure retried per the task's policy. */
export type BatchOutcome = { ok: true } | { ok: false; error: unknown };

export interface BatchContext {
  task: string;
  /** Aborted on timeout (the task's `timeout`, for the whole call) and on shutdown. */
  signal: AbortSignal;
  /** A pino child with `{ task, jobs }` (the batch's size). */
  log: Logger;
}

/**
 * A batch task's handler: the jobs of one batch (at most `batch.size`), in claim order.
 * Resolve with nothing when all succeeded, or with one BatchOutcome per job in the same
 * order; a throw (or a rejection) fails them all. Each failed job retries with its own
 * attempts, backoff and dead letter.
 */
// biome-ignore lint/suspicious/noExplicitAny: see Handler
export type BatchHandler<A = any> = (jobs: BatchJob<A>[], ctx: BatchContext) => unknown;

/**
 * `traceparent`/`tracestate`: the W3C trace context the job continues (default: the job's
 * or processor page's transaction it is deferred through, else the active OpenTelemetry
 * context); see docs/tracing.md.
 */
export interface DeferOptions extends TraceOptions {
  /** Join the caller's transaction: the job exists iff that transaction commits. */
  client?: Queryable;
  runAt?: TimeInput;
  /** Run after this long (instead of `runAt`). */
  delay?: DurationInput;
  priority?: number;
  queue?: string;
  lock?: string;
  queueingLock?: string;
  /**
   * With a queueing lock already waiting: throw AlreadyEnqueued (`error`, default), return
   * its id (`ignore`), or update it — args and run time (`replace`: with `delay`, a
   * debounce), or args only (`replace-args`). See docs/debounce.md.
   */
  onConflict?: OnConflict;
  /**
   * The job's group key within its queue (a tenant, a domain): per-group concurrency and
   * rate limits, and round-robin across groups, apply on queues with limits (docs/limits.md).
   */
  group?: string;
}

/** deferAndWait's options: a defer's (without `client`) and the wait's (`timeout`, `pollInterval`). */
export type DeferAndWaitOptions = Omit<DeferOptions, 'client'> & WaitOptions;

export interface JobInfo {
  id: string;
  task: string;
  queue: string;
  attempt: number;
  maxAttempts: number;
  priority: number;
  lock: string | null;
  queueingLock: string | null;
  group: string | null;
  runAt: Date;
  createdAt: Date;
}

export interface JobContext {
  job: JobInfo;
  /**
   * Aborted on timeout, on shutdown (stop early and let the job be retried), and when an
   * operator cancels the running job (reason: a JobCancelledError; the job is `cancelled`,
   * and whatever the handler does from then on is discarded).
   */
  signal: AbortSignal;
  log: Logger;
  /**
   * The job's transaction, when the task has `transaction: true` or after `transaction()`:
   * what is written through it commits atomically with the job's completion, and rolls
   * back if the handler fails. Pass it as `client` to `defer` or an events append.
   */
  tx?: Queryable;
  /** Opens (once) the job's transaction and returns it; see `tx`. */
  transaction(): Promise<Queryable>;
  /** Defers a follow-up job; inside the job's transaction when one is open. */
  defer(task: string | Task, args?: unknown, options?: Omit<DeferOptions, 'client'>): Promise<DeferResult>;
  /**
   * Reports how far the job is: `value` a percentage from 0 to 100, `message` an optional
   * line (at most 500 characters). Stored at most once a second per job, the latest value
   * always (docs/lifecycle.md); `jobs show`, the JSON API and the dashboard show it. A bad
   * value throws a ValidationError.
   */
  progress(value: number, message?: string): void;
}

// biome-ignore lint/suspicious/noExplicitAny: a handler may declare any argument type
export type Handler<A = any> = (args: A, ctx: JobContext) => unknown;

/** Options after validation, as the worker uses them. */
export interface ResolvedTask {
  name: string;
  queue: string;
  priority: number;
  maxAttempts: number;
  backoff: Backoff;
  retryOn: (error: unknown) => boolean;
  timeoutMs: number | null;
  onStall: 'retry' | 'fail';
  keepSucceededForMs: number | null;
  transaction: boolean;
  handler: Handler;
  /** The args' validator, if the task has one. */
  schema: StandardSchemaV1 | undefined;
  /**
   * A batch task's batching and handler; null for a task run job by job. A batch task's
   * `handler` runs one job as a batch of one.
   */
  batch: ResolvedBatch | null;
}

export interface ResolvedBatch {
  size: number;
  maxWaitMs: number;
  handler: BatchHandler;
}

// biome-ignore lint/suspicious/noExplicitAny: see Handler
export interface Task<A = any> {
  readonly name: string;
  readonly options: ResolvedTask;
  defer(args: A, options?: DeferOptions): Promise<DeferResult>;
  /**
   * All or none, in one round trip; results in input order. `client` and the trace
   * context apply to the whole batch.
   */
  deferMany(
    jobs: Array<{ args: A } & Omit<DeferOptions, 'client' | keyof TraceOptions>>,
    options?: { client?: Queryable } & TraceOptions,
  ): Promise<DeferResult[]>;
  /**
   * Defers a job and resolves with its handler's return value once it succeeds; rejects with
   * a JobOutcomeError when it failed for good, was cancelled or deleted, and with a
   * WaitTimeoutError after `timeout` (the job itself goes on). See docs/lifecycle.md.
   */
  deferAndWait<R = unknown>(args: A, options?: DeferAndWaitOptions): Promise<R>;
}

export function resolveTask(
  name: string,
  options: TaskOptions | BatchTaskOptions,
  handler: Handler | BatchHandler,
): ResolvedTask {
  checkTaskName(name);
  if ('batch' in options && options.batch !== undefined) return resolveBatchTask(name, options, handler);
  if (typeof handler !== 'function') {
    throw new ValidationError(`task "${name}" has no handler: expected a function (args, ctx) => Promise`);
  }
  const retry = options.retry ?? {};
  const onStall = options.onStall ?? 'retry';
  if (onStall !== 'retry' && onStall !== 'fail') {
    throw new ValidationError(
      `task "${name}" onStall ${JSON.stringify(onStall)} is invalid: expected 'retry' or 'fail'`,
    );
  }
  if (retry.retryOn !== undefined && typeof retry.retryOn !== 'function') {
    throw new ValidationError(
      `task "${name}" retry.retryOn is invalid: expected a function (error) => boolean`,
    );
  }
  return {
    name,
    queue: checkQueue(options.queue ?? 'default'),
    priority: checkInteger(options.priority ?? 0, `task "${name}" priority`),
    maxAttempts: checkInteger(retry.attempts ?? 5, `task "${name}" retry.attempts`, 1, 1_000_000),
    backoff: checkBackoff(retry.backoff, name),
    retryOn: retry.retryOn ?? (() => true),
    timeoutMs:
      options.timeout === undefined ? null : toMilliseconds(options.timeout, `task "${name}" timeout`),
    onStall,
    keepSucceededForMs:
      options.keepSucceededFor === undefined
        ? null
        : toMilliseconds(options.keepSucceededFor, `task "${name}" keepSucceededFor`),
    transaction: Boolean('transaction' in options && options.transaction),
    handler: handler as Handler,
    schema: options.schema === undefined ? undefined : checkSchema(options.schema, `task "${name}" schema`),
    batch: null,
  };
}

const MAX_BATCH_WAIT_MS = 3_600_000;

function resolveBatchTask(name: string, options: BatchTaskOptions, handler: unknown): ResolvedTask {
  if (typeof handler !== 'function') {
    throw new ValidationError(
      `task "${name}" has no handler: expected a function (jobs, ctx) => Promise<BatchOutcome[] | void>`,
    );
  }
  const { batch } = options;
  if (batch === null || typeof batch !== 'object') {
    throw new ValidationError(`task "${name}" batch is invalid: expected { size, maxWait }`);
  }
  if ((options as TaskOptions).transaction) {
    throw new ValidationError(
      `task "${name}" cannot have both batch and transaction: a batch task has no ctx.tx (see docs/batches.md)`,
    );
  }
  const size = checkInteger(batch.size, `task "${name}" batch.size`, 1, 1_000);
  const maxWaitMs =
    batch.maxWait === undefined ? 0 : toMilliseconds(batch.maxWait, `task "${name}" batch.maxWait`);
  if (maxWaitMs > MAX_BATCH_WAIT_MS) {
    throw new ValidationError(
      `task "${name}" batch.maxWait ${maxWaitMs} ms is invalid: expected at most one hour`,
    );
  }
  const batchHandler = handler as BatchHandler;
  const { batch: _batch, ...rest } = options;
  const single = resolveTask(name, rest, oneJobBatch(batchHandler));
  return { ...single, batch: { size, maxWaitMs, handler: batchHandler } };
}

/** A batch handler called with one job, as a job handler: its failure is thrown. */
function oneJobBatch(handler: BatchHandler): Handler {
  return async (args, ctx) => {
    const { id, task, queue, attempt, maxAttempts, priority, lock, queueingLock, group, runAt, createdAt } =
      ctx.job;
    const job = {
      id,
      task,
      queue,
      attempt,
      maxAttempts,
      priority,
      lock,
      queueingLock,
      group,
      runAt,
      createdAt,
      args,
    };
    const results = await handler([job], { task, signal: ctx.signal, log: ctx.log });
    const first = Array.isArray(results) ? (results[0] as BatchOutcome | undefined) : undefined;
    if (first && first.ok === false) throw first.error;
  };
}

/**
 * Turns defer options into a row for defer_job(). `task` is undefined when deferring by
 * name: NULL queue, priority and attempts then take the task's registered values.
 */
export function toJobSpec(
  name: string,
  args: unknown,
  options: Omit<DeferOptions, 'client'>,
  task: ResolvedTask | undefined,
  now: () => Date,
  injectedClock = false,
): JobSpec {
  checkTaskName(name);
  const onConflict = options.onConflict ?? 'error';
  if (!ON_CONFLICT_MODES.includes(onConflict)) {
    throw new ValidationError(
      `onConflict ${JSON.stringify(onConflict)} is invalid: expected 'error', 'ignore', 'replace' or 'replace-args'`,
    );
  }
  if ((onConflict === 'replace' || onConflict === 'replace-args') && options.queueingLock === undefined) {
    throw new ValidationError(
      `onConflict '${onConflict}' needs a queueingLock: it replaces the job waiting with that lock`,
    );
  }
  if (options.runAt !== undefined && options.delay !== undefined) {
    throw new ValidationError(`defer of "${name}" got both runAt and delay: give one of them`);
  }
  let runAt: Date | null = null;
  if (options.runAt !== undefined) runAt = toDate(options.runAt, 'runAt');
  if (options.delay !== undefined) runAt = new Date(now().getTime() + toMilliseconds(options.delay, 'delay'));
  if (runAt === null && injectedClock) runAt = now();
  return {
    task: name,
    args: argsToJson(args, name),
    queue: options.queue !== undefined ? checkQueue(options.queue) : (task?.queue ?? null),
    runAt,
    priority:
      options.priority !== undefined ? checkInteger(options.priority, 'priority') : (task?.priority ?? null),
    lock: options.lock !== undefined ? checkLockName(options.lock, 'lock') : null,
    queueingLock:
      options.queueingLock !== undefined ? checkLockName(options.queueingLock, 'queueingLock') : null,
    maxAttempts: task?.maxAttempts ?? null,
    onConflict,
    group: options.group !== undefined ? checkGroup(options.group) : null,
    origin: null,
  };
}

/** The args as the task's schema outputs them (what the job stores), or a ValidationError naming `where`. */
export function checkArgs(task: ResolvedTask, args: unknown, where: string): Promise<unknown> {
  if (!task.schema) return Promise.resolve(args);
  return validateWith(task.schema, args, where, `the schema of task "${task.name}"`);
}

export interface TaskEnv {
  schema: string;
  pool: () => Promise<Queryable>;
  now: () => Date;
  /** A test clock: jobs default to due at its time, not the database's (which the worker then ignores). */
  injectedClock: boolean;
  /** Told of each job deferred for later, so a worker in this process can claim it when due. */
  deferredFor: (runAt: Date) => void;
  /** Defers the job marked awaited and waits for its outcome (await.ts). */
  deferAndWait: (spec: JobSpec, settings: WaitSettings) => Promise<unknown>;
  /** Where a job's origin comes from (its cause and trace context). */
  tracing: Tracing;
}

/**
 * The origin to store with jobs deferred through `client` with `trace`, as JSON text, or
 * null. Synchronous once tracing has settled (one boolean): no extra await per defer.
 */
function jobOrigin(
  env: TaskEnv,
  trace: TraceContext | undefined,
  client: Queryable | undefined,
): string | null {
  const origin = env.tracing.origin(trace, client);
  return origin === undefined ? null : JSON.stringify(origin);
}

/** Defers one job; a worker in this process is told when it falls due. */
export async function deferSpec(
  env: TaskEnv,
  spec: JobSpec,
  client?: Queryable,
  trace?: TraceContext,
): Promise<DeferResult> {
  if (!env.tracing.settled) await env.tracing.ready;
  spec.origin = jobOrigin(env, trace, client);
  const result = await deferJob(client ?? (await env.pool()), env.schema, spec);
  if (spec.runAt) env.deferredFor(spec.runAt);
  return result;
}

export function makeTask(resolved: ResolvedTask, env: TaskEnv): Task {
  return {
    name: resolved.name,
    options: resolved,
    async defer(args, options = {}) {
      const trace = traceOption(options);
      const checked = resolved.schema ? await checkArgs(resolved, args, 'args') : args;
      const spec = toJobSpec(resolved.name, checked, options, resolved, env.now, env.injectedClock);
      return deferSpec(env, spec, options.client, trace);
    },
    async deferMany(jobs, options = {}) {
      const trace = traceOption(options);
      if (!Array.isArray(jobs)) {
        throw new ValidationError(`deferMany of "${resolved.name}" expects an array of { args, ...options }`);
      }
      for (const [i, job] of jobs.entries()) {
        if (job === null || typeof job !== 'object') {
          throw new ValidationError(
            `deferMany of "${resolved.name}": item ${i} is not an object { args, ...options }`,
          );
        }
      }
      // The schema's output is what is stored, so it is taken before the args become JSON.
      const argsList: unknown[] = jobs.map((job) => job.args);
      if (resolved.schema) {
        for (const [i, args] of argsList.entries()) {
          argsList[i] = await checkArgs(resolved, args, `jobs[${i}].args`);
        }
      }
      const specs = jobs.map(({ args: _args, ...rest }, i) =>
        toJobSpec(resolved.name, argsList[i], rest, resolved, env.now, env.injectedClock),
      );
      if (!env.tracing.settled) await env.tracing.ready;
      const origin = jobOrigin(env, trace, options.client);
      const result = await deferJobs(options.client ?? (await env.pool()), env.schema, specs, origin);
      for (const spec of specs) if (spec.runAt) env.deferredFor(spec.runAt);
      return result;
    },
    async deferAndWait<R>(args: unknown, options: DeferAndWaitOptions = {}) {
      const settings = checkWaitOptions(options, resolved.name);
      const { timeout: _timeout, pollInterval: _pollInterval, ...deferOptions } = options;
      const checked = resolved.schema ? await checkArgs(resolved, args, 'args') : args;
      const spec = toJobSpec(resolved.name, checked, deferOptions, resolved, env.now, env.injectedClock);
      return (await env.deferAndWait(spec, settings)) as R;
    },
  };
}
