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
export class MigrationError extends OutbatchError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('OUTBATCH_MIGRATION', message, options);
  }
}

/** The embedded PostgreSQL server could not be prepared or started. */
export class EmbeddedServerError extends OutbatchError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('OUTBATCH_EMBEDDED', message, options);
  }
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  if (typeof error === 'string') return error;
  try {
    return JSON.stringify(error) ?? String(error);
  } catch {
    return String(error);
  }
}

/**
 * A defer with `queueingLock` met a job with that lock still waiting (`todo`) and the
 * caller asked for `onConflict: 'error'` (the default). With `'ignore'` the same outcome
 * is the value `{ enqueued: false, existingId }` instead.
 */
export class AlreadyEnqueued extends OutbatchError {
  constructor(
    readonly queueingLock: string,
    readonly existingId: string,
  ) {
    super(
      'OUTBATCH_ALREADY_ENQUEUED',
      `a job with queueing lock "${queueingLock}" is already enqueued (job ${existingId}): pass onConflict: 'ignore' to get its id instead`,
    );
  }
}

/** A job handler ran longer than its task's `timeout`; its AbortSignal was fired. */
export class JobTimeoutError extends OutbatchError {
  constructor(timeoutMs: number) {
    super('OUTBATCH_JOB_TIMEOUT', `job exceeded its timeout of ${timeoutMs} ms`);
  }
}
