/**
 * Runs one claimed job's handler: builds its context, enforces the timeout, and reports
 * how it ended. A handler that throws a non-Error, throws synchronously, ignores its
 * signal, or rejects long after its timeout never takes the worker down.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import type { Queryable } from '../db/queryable.js';
import { errorMessage, JobTimeoutError } from '../errors.js';
import { AWAITED_KEEP_MS } from '../jobs/await.js';
import type { ClaimedJob } from '../jobs/claim.js';
import type { DeferResult } from '../jobs/defer.js';
import { checkProgress, type ProgressReport } from '../jobs/progress.js';
import type { JobQueue } from '../jobs/queue.js';
import type { DeferOptions, JobContext, JobInfo, ResolvedTask, Task } from '../jobs/task.js';
import { checkJson } from '../json.js';
import type { Origin } from '../trace/origin.js';
import type { JobSpan } from '../trace/otel.js';
import { validTraceparent, validTracestate } from '../trace/traceContext.js';
import type { Tracing } from '../trace/tracing.js';
import { discardTransaction, type TransactionEnds } from './jobTransaction.js';

export type Outcome =
  /** `value`: what the handler returned (stored as the job's result when its row is kept). */
  | { kind: 'succeeded'; durationMs: number; value: unknown }
  | { kind: 'failed'; error: unknown; durationMs: number }
  /** The worker is shutting down and aborted the handler, which then gave up. */
  | { kind: 'interrupted' }
  /** An operator cancelled the running job (the row is `cancelled` already). */
  | { kind: 'cancelled' };

export interface RunJobDeps {
  /** The handler pool: the job's own transaction comes from here. */
  pool: pg.Pool;
  /** How a transaction the job will not commit is ended. */
  ends: TransactionEnds;
  log: Logger;
  /** The queue's defer, for `ctx.defer` inside the job's transaction. */
  defer: JobQueue['defer'];
  /** Where `ctx.progress` reports go (the worker's throttled writer). */
  progress: (report: ProgressReport) => void;
  /** What the job's transaction names as the cause of what is written through it; and the job's span. */
  tracing?: Tracing;
  /**
   * Records a run abandoned at its timeout in abandoned_runs, before its failure is written,
   * so that its slot and its lock stay taken while its handler runs on (schema/039). Never
   * rejects: if it cannot be written, the run is abandoned all the same.
   */
  holdAbandoned: (job: ClaimedJob) => Promise<void>;
}

export class ShutdownAbort extends Error {
  constructor() {
    super('the worker is shutting down');
    this.name = 'ShutdownAbort';
  }
}

/** The job as its handler sees it; times become Dates only when asked for. */
class JobView implements JobInfo {
  constructor(private readonly row: ClaimedJob) {}
  get id() {
    return this.row.id;
  }
  get task() {
    return this.row.task;
  }
  get queue() {
    return this.row.queue;
  }
  get attempt() {
    return this.row.attempts;
  }
  get maxAttempts() {
    return this.row.max_attempts;
  }
  get priority() {
    return this.row.priority;
  }
  get lock() {
    return this.row.lock;
  }
  get queueingLock() {
    return this.row.queueing_lock;
  }
  get group() {
    return this.row.group_key;
  }
  get runAt() {
    return new Date(this.row.run_at_ms);
  }
  get createdAt() {
    return new Date(this.row.created_at_ms);
  }
  toJSON(): JobInfo {
    const { id, task, queue, attempt, maxAttempts, priority, lock, queueingLock, group, runAt, createdAt } =
      this;
    return { id, task, queue, attempt, maxAttempts, priority, lock, queueingLock, group, runAt, createdAt };
  }
}

/** The handler's `ctx`. Methods live on the prototype: nothing is allocated per job that a handler does not use. */
class Context implements JobContext {
  tx: Queryable | undefined = undefined;
  readonly job: JobInfo;
  constructor(private readonly run: RunningJob) {
    this.job = new JobView(run.job);
  }
  get signal(): AbortSignal {
    return this.run.signal();
  }
  get log(): Logger {
    return this.run.logger();
  }
  transaction(): Promise<Queryable> {
    return this.run.openTransaction();
  }
  async defer(
    name: string | Task,
    args?: unknown,
    options: Omit<DeferOptions, 'client'> = {},
  ): Promise<DeferResult> {
    // Follow-ups exist iff this job completes: they go through the job's transaction.
    return this.run.deps.defer(name, args, { ...options, client: await this.run.openTransaction() });
  }
  progress(value: number, message?: string): void {
    const checked = checkProgress(value, message);
    const { job } = this.run;
    this.run.deps.progress({ id: job.id, attempt: job.attempts, ...checked });
  }
}

/**
 * How long a job's row is kept after success: the task's keepSucceededFor, or for a job a
 * caller waits on (deferAndWait) at least AWAITED_KEEP_MS; null deletes it. Shared by jobs
 * run one by one and jobs of batch tasks (a batch's completion once ignored `awaited` and
 * deleted the row its waiter was about to read).
 */
export function keepForMs(job: ClaimedJob, task: ResolvedTask): number | null {
  const kept = task.keepSucceededForMs;
  if (!job.awaited) return kept;
  return Math.max(kept ?? 0, AWAITED_KEEP_MS);
}

/** \u0000 or a \uD800-\uDFFF escape in JSON text (cheap: a result rarely has a \u escape at all). */
const UNSTORABLE_ESCAPE = /\\u(0000|d[89a-f])/i;

/** One claimed job being run. `outcome` settles once, and never rejects. */
export class RunningJob {
  shuttingDown = false;
  /** Its outcome has been handed to the outcome writer (or it was released at shutdown). */
  settled = false;
  /** This worker claimed the job again (it had been recovered away): this run's outcome is dropped. */
  superseded = false;
  /** The run was given up on at its timeout (its handler may still be running). */
  timedOut = false;
  /** `<id>:<attempt>`, the claim's key in the worker's maps (made once, hashed once). */
  readonly key: string;
  readonly outcome: Promise<Outcome>;
  /** The handler's own settling (never rejects), whatever the outcome was: see handlerSettled. */
  private readonly handled: Promise<Outcome>;
  private client: pg.PoolClient | undefined;
  private opening: Promise<pg.PoolClient> | undefined;
  // Made only if the handler reads ctx.signal (or when aborted): creating an
  // AbortController per job was a measurable share of a no-op job's cost.
  private controller: AbortController | undefined;
  private aborted = false;
  /** The transaction was handed over: one that finishes opening later is discarded. */
  private transactionTaken = false;
  private abortReason: unknown;
  private log: Logger | undefined;
  private readonly ctx: Context;
  /** With OpenTelemetry loaded: this run's span. */
  private readonly span: JobSpan | undefined;

  constructor(
    readonly job: ClaimedJob,
    readonly task: ResolvedTask,
    readonly deps: RunJobDeps,
  ) {
    this.key = `${job.id}:${job.attempts}`;
    this.ctx = new Context(this);
    const started = performance.now();
    // One field check when OpenTelemetry is not loaded. startJob never throws, not even
    // when the SDK does (otel.ts start()).
    const otel = deps.tracing?.otel;
    this.span = otel?.startJob(job, job.origin);
    let result: unknown;
    try {
      // No closure per job without a span (tsx names each one: a defineProperty per job).
      result = this.span ? this.span.run(() => this.callHandler()) : this.callHandler();
    } catch (error) {
      result = Promise.reject(error);
    }
    const handled = Promise.resolve(result).then(
      (value): Outcome => ({ kind: 'succeeded', durationMs: performance.now() - started, value }),
      (error: unknown): Outcome =>
        this.shuttingDown && this.aborted
          ? { kind: 'interrupted' }
          : { kind: 'failed', error, durationMs: performance.now() - started },
    );
    this.handled = handled;
    this.outcome = task.timeoutMs === null ? handled : this.withTimeout(handled, task.timeoutMs, started);
    if (this.span) void this.outcome.then((outcome) => this.endSpan(outcome));
  }

  /**
   * Ends the run's span (once; nothing without OpenTelemetry). Also called by the worker when
   * it is done with the run before the handler is — a cancel, a shutdown past its timeout —
   * or a handler that ignores its signal kept the span open for as long as it ran, and one
   * left at shutdown was never exported (test/trace/spanEnd.test.ts).
   */
  private callHandler(): unknown {
    const { task, job } = this;
    return task.transaction
      ? this.openTransaction().then(() => task.handler(job.args, this.ctx))
      : task.handler(job.args, this.ctx);
  }

  /**
   * Settles when the handler returns or throws, whatever the outcome was; never rejects.
   * Made only for a run given up on (cancelled, timed out): no promise per job otherwise.
   */
  handlerSettled(): Promise<void> {
    return this.handled.then(() => {});
  }

  endSpan(outcome: Outcome): void {
    this.span?.end(
      outcome.kind === 'failed'
        ? { error: outcome.error }
        : { interrupted: outcome.kind === 'interrupted', cancelled: outcome.kind === 'cancelled' },
    );
  }

  /**
   * What the job's follow-ups record as their origin: this job, and the trace it continues
   * (its span's, with OpenTelemetry; else the one it was deferred with, passed on as is).
   */
  private followUpOrigin(): Origin {
    if (this.span) return this.span.origin;
    const stored = this.job.origin;
    // Read back as checked values: a stored origin written from SQL may hold any JSON, and
    // what is passed on here becomes the follow-ups' origin (and an event's, which a
    // processor with OpenTelemetry parses).
    const traceparent = validTraceparent(stored?.traceparent);
    if (traceparent === undefined) return { job: this.job.id };
    return { job: this.job.id, traceparent, tracestate: validTracestate(stored?.tracestate) };
  }

  private withTimeout(handled: Promise<Outcome>, timeoutMs: number, started: number): Promise<Outcome> {
    return new Promise<Outcome>((resolve) => {
      const timer = setTimeout(() => {
        this.timedOut = true;
        const error = new JobTimeoutError(timeoutMs);
        this.abort(error);
        const durationMs = performance.now() - started;
        // We do not wait for a handler that ignores its signal: the attempt fails now, and
        // whatever it does later is discarded (its transaction is rolled back). Its slot and
        // its lock stay taken until it returns: recorded first, then the failure written.
        void this.deps.holdAbandoned(this.job).then(() => resolve({ kind: 'failed', error, durationMs }));
      }, timeoutMs);
      void handled.then((outcome) => {
        clearTimeout(timer);
        // Timed out already: a handler returning while the run is recorded does not undo that.
        if (!this.timedOut) resolve(outcome);
      });
    });
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.abortReason = reason;
    this.controller?.abort(reason);
  }

  signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort(this.abortReason);
    }
    return this.controller.signal;
  }

  /**
   * How long the row is kept after success: the task's keepSucceededFor, or for a job a
   * caller waits on (deferAndWait) at least AWAITED_KEEP_MS; null deletes it.
   */
  keepForMs(): number | null {
    return keepForMs(this.job, this.task);
  }

  /**
   * The handler's return value as stored JSON text, when the row is kept (null: nothing to
   * store). Not plain JSON (a BigInt, a cycle, NaN…): a ValidationError naming the value,
   * which fails the attempt. Rows that are deleted never pay for it.
   */
  resultJson(value: unknown, keepForMs: number | null): string | null {
    if (keepForMs === null || value === undefined) return null;
    const path = `the return value of task "${this.job.task}"`;
    checkJson(value, path);
    const text = JSON.stringify(value);
    // checkJson trusts what a toJSON method gives; JSON.stringify writes a NUL or a lone
    // surrogate from there as a \u escape, which jsonb refuses — and a refused completion
    // fails the job for good ("outcome could not be recorded"), never retried (found by
    // review). Such an escape in the text: the value as written is checked again, naming it.
    if (UNSTORABLE_ESCAPE.test(text)) checkJson(JSON.parse(text), path);
    return text;
  }

  logger(): Logger {
    this.log ??= this.deps.log.child({ task: this.job.task, jobId: this.job.id, attempt: this.job.attempts });
    return this.log;
  }

  /**
   * Hands the job's transaction (if the handler opened one) to whoever writes the outcome,
   * once. A transaction still opening when the outcome is decided (a timeout) is
   * discarded as soon as it opens, so no connection is left in a transaction.
   */
  takeTransaction(): pg.PoolClient | undefined {
    this.transactionTaken = true;
    const client = this.client;
    this.client = undefined;
    if (client) this.deps.tracing?.unbind(client);
    return client;
  }

  openTransaction(): Promise<pg.PoolClient> {
    this.opening ??= (async () => {
      const connection = await this.deps.pool.connect();
      try {
        await connection.query('BEGIN');
      } catch (error) {
        connection.release(error as Error);
        throw error;
      }
      if (this.transactionTaken) {
        await discardTransaction(connection, this.deps.ends);
        throw new Error('the job already ended (timed out or shut down); its transaction was discarded');
      }
      this.client = connection;
      this.ctx.tx = connection;
      // Jobs deferred and events appended through it (ctx.defer, ctx.tx) name this job.
      this.deps.tracing?.bind(connection, this.followUpOrigin());
      return connection;
    })();
    return this.opening;
  }
}

const MESSAGE_MAX = 2_000;
const STACK_MAX = 8_000;

/**
 * An error as stored in the job row: message and stack, whatever was thrown. Never throws
 * (a throwing getter, a BigInt, a null prototype), and the text is one jsonb can hold
 * (PostgreSQL refuses NUL and lone surrogates in jsonb) and of bounded size: a refused or
 * huge failure must not stand in front of every other outcome.
 */
export function describeError(error: unknown): { message: string; stack?: string } {
  try {
    return describe(error);
  } catch {
    // A revoked Proxy throws even from `instanceof`.
    return { message: 'handler threw a value that cannot be described' };
  }
}

function describe(error: unknown): { message: string; stack?: string } {
  let message: string;
  let stack: string | undefined;
  if (error instanceof Error) {
    message = attempt(() => error.message) || attempt(() => error.name) || 'Error';
    stack = attempt(() => error.stack);
  } else if (error === undefined) {
    message = 'handler threw undefined';
  } else {
    message = `handler threw a non-Error: ${errorMessage(error)}`;
  }
  return stack
    ? { message: storable(message, MESSAGE_MAX), stack: storable(stack, STACK_MAX) }
    : { message: storable(message, MESSAGE_MAX) };
}

function attempt(read: () => unknown): string | undefined {
  try {
    const value = read();
    return value === undefined || value === null ? undefined : errorMessage(value);
  } catch {
    return undefined;
  }
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** Text jsonb accepts, at most `max` characters (plus a note of what was cut). */
export function storable(text: string, max: number): string {
  const capped = text.length > max ? `${text.slice(0, max)}… (${text.length - max} more characters)` : text;
  return capped.replace(/\u0000/g, '\uFFFD').replace(LONE_SURROGATE, '\uFFFD');
}
