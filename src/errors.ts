/**
 * Errors a caller may want to branch on carry a stable `code`. Expected outcomes
 * (a queueing lock already taken with `onConflict: 'ignore'`, say) are values, not errors.
 */
export class OutbatchError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Bad input from a caller or a user: the message names what was wrong and what was expected. */
export class ValidationError extends OutbatchError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('OUTBATCH_INVALID', message, options);
  }
}

/** PostgreSQL could not be reached or refused us; `retryable` says whether trying again may help. */
export class ConnectionError extends OutbatchError {
  constructor(
    message: string,
    readonly retryable: boolean,
    options?: { cause?: unknown },
  ) {
    super('OUTBATCH_CONNECTION', message, options);
  }
}

/** The database's migrations do not match this code (pending, newer, or edited). */
/** The online conversion of events to partitions could not finish; running it again is safe. */
export class ConversionError extends OutbatchError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('OUTBATCH_CONVERSION', message, options);
  }
}

export class MigrationError extends OutbatchError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('OUTBATCH_MIGRATION', message, options);
  }
}

/** The server is older than outbatch supports (src/db/serverVersion.ts); the message names both versions. */
export class UnsupportedServerError extends OutbatchError {
  constructor(
    message: string,
    /** `server_version` as the server printed it. */
    readonly found: string,
  ) {
    super('OUTBATCH_SERVER_VERSION', message);
  }
}

/** The embedded PostgreSQL server could not be prepared or started. */
export class EmbeddedServerError extends OutbatchError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('OUTBATCH_EMBEDDED', message, options);
  }
}

/** One line of text for any thrown value; never throws (a null-prototype object holding a BigInt defeats both String and JSON). */
export function errorMessage(error: unknown): string {
  try {
    if (error instanceof Error) return String(error.message);
    if (typeof error === 'string') return error;
    const json = JSON.stringify(error);
    if (json !== undefined) return json;
  } catch {
    // BigInt, a cycle, a throwing getter or toJSON: try the plainer ways below
  }
  try {
    return String(error);
  } catch {
    try {
      return `${Object.prototype.toString.call(error)} with keys ${Object.keys(error as object).join(', ')}`;
    } catch {
      return 'a value that cannot be printed';
    }
  }
}

export type ExpectedVersion = number | 'no_stream' | 'any';

/** An append with `expectedVersion` found the stream somewhere else; nothing was written. */
export class ConcurrencyError extends OutbatchError {
  constructor(
    readonly stream: string,
    readonly expected: ExpectedVersion,
    readonly actual: number,
    options?: { cause?: unknown },
  ) {
    super(
      'OUTBATCH_CONCURRENCY',
      `stream "${stream}" is at version ${actual}, expected ${expected === 'no_stream' ? 'no stream' : expected}: reload the stream and decide again`,
      options,
    );
  }
}

/**
 * Two transactions appended the same new idempotency key at the same moment and the
 * other one committed first. Retrying the transaction returns the stored event.
 */
export class IdempotencyConflictError extends OutbatchError {
  readonly retryable = true;
  constructor(message: string, options?: { cause?: unknown }) {
    super('OUTBATCH_IDEMPOTENCY_CONFLICT', message, options);
  }
}

/**
 * An append routed to events_overflow (partitions fell behind) while a worker attached the
 * partition that covers its position: nothing was stored, and the same append succeeds
 * when tried again (docs/event-log.md). Retried once on outbatch's own connection.
 */
export class PartitionRaceError extends OutbatchError {
  readonly retryable = true;
  constructor(message: string, options?: { cause?: unknown }) {
    super('OUTBATCH_PARTITION_RACE', message, options);
  }
}

/**
 * Stored transaction ids are ahead of the server's: the database was restored logically
 * (pg_dump) into a cluster whose xids start lower. New events would sort before old
 * checkpoints and be skipped, so readers refuse to run until the ids are rebased.
 */
export class TxIdHorizonError extends OutbatchError {
  constructor(
    message: string,
    readonly highestStored: bigint,
    readonly nextServer: bigint,
  ) {
    super('OUTBATCH_TX_ID_HORIZON', message);
  }
}

/**
 * A defer with `queueingLock` met a job with that lock still waiting (`todo`) and the
 * caller asked for `onConflict: 'error'` (the default). With `'ignore'` the same outcome
 * is the value `{ enqueued: false, existingId }` instead. Also thrown by a replace that met
 * a waiting job of another task (`existingTask`).
 */
export class AlreadyEnqueued extends OutbatchError {
  constructor(
    readonly queueingLock: string,
    readonly existingId: string,
    /** Set when a replace met a waiting job of this other task, which it does not replace. */
    readonly existingTask?: string,
    /** What refused the other task's job: a replace, or a deferAndWait that would have waited for it. */
    refusedBy = "onConflict 'replace' replaces",
  ) {
    super(
      'OUTBATCH_ALREADY_ENQUEUED',
      existingTask === undefined
        ? `a job with queueing lock "${queueingLock}" is already enqueued (job ${existingId}): pass onConflict: 'ignore' to get its id instead`
        : `a job with queueing lock "${queueingLock}" is already enqueued (job ${existingId}) for task "${existingTask}": ${refusedBy} only a waiting job of the same task`,
    );
  }
}

/** A job handler ran longer than its task's `timeout`; its AbortSignal was fired. */
export class JobTimeoutError extends OutbatchError {
  constructor(timeoutMs: number) {
    super('OUTBATCH_JOB_TIMEOUT', `job exceeded its timeout of ${timeoutMs} ms`);
  }
}

/**
 * The job was cancelled by an operator while its handler ran: the reason its ctx.signal
 * was aborted. The job is `cancelled`; nothing the handler does from then on is recorded.
 */
export class JobCancelledError extends OutbatchError {
  constructor(readonly jobId: string) {
    super('OUTBATCH_JOB_CANCELLED', `job ${jobId} was cancelled`);
  }
}

/**
 * `deferAndWait` learned that its job will not succeed: it failed for good (dead letter),
 * was cancelled, or its row was deleted. `status` says which; `lastError` is the job's
 * last error message, if any.
 */
export class JobOutcomeError extends OutbatchError {
  constructor(
    readonly jobId: string,
    readonly status: 'failed' | 'cancelled' | 'gone',
    message: string,
    readonly lastError: string | null = null,
  ) {
    super(
      status === 'failed'
        ? 'OUTBATCH_JOB_FAILED'
        : status === 'cancelled'
          ? 'OUTBATCH_JOB_CANCELLED'
          : 'OUTBATCH_JOB_GONE',
      message,
    );
  }
}

/** `deferAndWait` gave up after its `timeout`; the job itself goes on. */
export class WaitTimeoutError extends OutbatchError {
  constructor(
    readonly jobId: string,
    timeoutMs: number,
  ) {
    super(
      'OUTBATCH_WAIT_TIMEOUT',
      `gave up waiting for job ${jobId} after ${timeoutMs} ms; the job itself goes on (outbatch jobs show ${jobId})`,
    );
  }
}

/**
 * A read, a processor, a replay or a re-drive asked for events before the archived
 * horizon: they left the database (`outbatch events archive`). The message names the
 * archive file(s), when, and the ways out: read from the horizon on, or import the file
 * into another schema.
 */
export class ArchivedEventsError extends OutbatchError {
  constructor(
    message: string,
    /** The archived horizon, `"<tx_id>:<position>"`: reading after it is allowed. */
    readonly horizon: string,
    /** The archive files, oldest first. */
    readonly files: string[],
  ) {
    super('OUTBATCH_ARCHIVED', message);
  }
}
