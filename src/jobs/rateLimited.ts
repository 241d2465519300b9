/**
 * `RateLimited`: a handler's way to say "the downstream told me to wait". The job goes
 * back to `todo` without counting an attempt, due at the retry time, and its queue (or its
 * group) is paused until then for every worker (docs/limits.md).
 */
import { type DurationInput, readDuration } from '../duration.js';
import { OutbatchError, ValidationError } from '../errors.js';

/** When to try again: a duration (ms, luxon Duration, `{ seconds: 30 }`) from now, or a Date. */
export type RetryAfter = Date | DurationInput;

/** Without a Retry-After header (or with one that cannot be read), a 429 waits this long. */
export const DEFAULT_RETRY_AFTER_MS = 60_000;

/** The longest wait accepted: a day. A bigger one is most likely a unit mistake (seconds given as ms × 1,000). */
export const MAX_RETRY_AFTER_MS = 86_400_000;

export class RateLimited extends OutbatchError {
  /** Epoch ms, fixed when the error is made (a duration counts from then). */
  readonly retryAt: number;

  constructor(options: { retryAfter: RetryAfter; message?: string }, now: number = Date.now()) {
    const retryAt = toRetryAt(options?.retryAfter, now);
    super(
      'OUTBATCH_RATE_LIMITED',
      options.message ?? `rate limited: retry at ${new Date(retryAt).toISOString()}`,
    );
    this.retryAt = retryAt;
  }

  /**
   * From a fetch Response (or anything shaped like one: `status`, `headers.get`) with
   * status 429 or 503: its `Retry-After` header, in seconds or as an HTTP date (at most a
   * day away); without a readable one, DEFAULT_RETRY_AFTER_MS. Any other status is a
   * ValidationError: it is not a rate limit.
   */
  static fromResponse(response: unknown, now: number = Date.now()): RateLimited {
    if (!isRateLimitResponse(response)) {
      throw new ValidationError(
        `RateLimited.fromResponse got ${describe(response)}: expected a Response with status 429 or 503`,
      );
    }
    const header = response.headers.get('retry-after');
    // The server's word, capped at a day (a caller's own retryAfter past that is an error).
    const at = Math.min(parseRetryAfter(header, now).getTime(), now + MAX_RETRY_AFTER_MS);
    return new RateLimited(
      { retryAfter: new Date(at), message: `rate limited (HTTP ${response.status})` },
      now,
    );
  }
}

interface ResponseLike {
  status: number;
  headers: { get(name: string): string | null };
}

function isResponseLike(value: unknown): value is ResponseLike {
  const v = value as ResponseLike | null;
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof v.status === 'number' &&
    typeof v.headers === 'object' &&
    v.headers !== null &&
    typeof v.headers.get === 'function'
  );
}

function isRateLimitResponse(value: unknown): value is ResponseLike {
  return isResponseLike(value) && (value.status === 429 || value.status === 503);
}

function describe(value: unknown): string {
  if (isResponseLike(value)) return `a response with status ${value.status}`;
  return value === null ? 'null' : typeof value;
}

/** `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3), as a Date. */
export function parseRetryAfter(header: string | null, now: number): Date {
  const text = header?.trim() ?? '';
  if (/^\d+$/.test(text)) return new Date(now + Number(text) * 1_000);
  const date = text === '' ? Number.NaN : Date.parse(text);
  return new Date(Number.isNaN(date) ? now + DEFAULT_RETRY_AFTER_MS : date);
}

function toRetryAt(value: unknown, now: number): number {
  let at: number;
  if (value instanceof Date) {
    at = value.getTime();
    if (Number.isNaN(at)) throw new ValidationError('RateLimited retryAfter is an invalid Date');
  } else {
    const read = readDuration(value);
    const ms = 'duration' in read ? read.duration.toMillis() : Number.NaN;
    if (!(ms >= 0)) {
      throw new ValidationError(
        `RateLimited retryAfter ${JSON.stringify(value)} is invalid: expected a Date, or a non-negative duration (ms, a luxon Duration, { seconds: 30 })`,
      );
    }
    at = now + ms;
  }
  if (at - now > MAX_RETRY_AFTER_MS) {
    throw new ValidationError(
      `RateLimited retryAfter is ${Math.round((at - now) / 1000)} s away: expected at most a day (was a number of seconds given as milliseconds?)`,
    );
  }
  return Math.max(at, now);
}

/**
 * What a handler threw, read as a rate limit: a RateLimited, or a 429/503 Response thrown
 * as is (`if (!res.ok) throw res`). Anything else is null: an ordinary failure. Never
 * throws (a revoked Proxy throws even from `instanceof`).
 */
export function asRateLimited(error: unknown, now: number = Date.now()): RateLimited | null {
  try {
    if (error instanceof RateLimited) return error;
    if (isRateLimitResponse(error)) return RateLimited.fromResponse(error, now);
  } catch {
    // Not something we can read as a rate limit: an ordinary failure.
  }
  return null;
}
