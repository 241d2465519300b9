/** Durations as callers write them (milliseconds, a luxon Duration, `{ minutes: 5 }`, or `5m` on the command line): one type, one parser. */
import { Duration, type DurationLikeObject } from 'luxon';
import { ValidationError } from './errors.js';

/** Milliseconds, a luxon Duration, or an object such as `{ minutes: 5 }`. */
export type DurationInput = number | Duration | DurationLikeObject;
/** The name schedules and processors used; the same type. */
export type DurationLike = DurationInput;

const EXPECTED = 'expected a non-negative duration (milliseconds, a luxon Duration, or { minutes: 5 })';

/**
 * A valid, finite luxon Duration (possibly negative), or why the value is not one. A
 * value, not an error, so that a caller with its own rule (schedules: at least a second)
 * words the message; toMilliseconds is the usual way in.
 */
export function readDuration(value: unknown): { duration: Duration } | { problem: string } {
  let duration: Duration;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) return { problem: EXPECTED };
    duration = Duration.fromMillis(value);
  } else if (Duration.isDuration(value)) {
    duration = value;
  } else if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    try {
      duration = Duration.fromObject(value as DurationLikeObject);
    } catch (error) {
      return {
        problem: `expected milliseconds, a luxon Duration or an object like { minutes: 5 } (${(error as Error).message})`,
      };
    }
  } else {
    return { problem: EXPECTED };
  }
  if (!duration.isValid || !Number.isFinite(duration.toMillis())) {
    return { problem: duration.invalidExplanation ?? EXPECTED };
  }
  return { duration };
}

/** A non-negative duration in milliseconds; otherwise a one-line error naming `what`. */
export function toMilliseconds(value: unknown, what: string): number {
  const read = readDuration(value);
  const ms = 'duration' in read ? read.duration.toMillis() : Number.NaN;
  if (!(ms >= 0)) {
    const problem = 'problem' in read ? read.problem : EXPECTED;
    throw new ValidationError(`${what} ${JSON.stringify(value)} is invalid: ${problem}`);
  }
  return ms;
}

/** `90s`, `5m`, `2h`, `1d`, `250ms`, or ISO 8601 (`PT5M`): for the command line. */
export function parseDurationText(text: string, what: string): number {
  const short = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text.trim());
  if (short) {
    const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[short[2] as 'ms'];
    return Number(short[1]) * unit;
  }
  const iso = Duration.fromISO(text.trim());
  // Found in review: ISO 8601 takes signs (`PT-5M`, `P-1D`); a negative duration read as
  // valid let the JSON API's `pause?for=PT-5M` write (and audit) a pause already over.
  // The short form has no sign either.
  if (iso.isValid && iso.as('milliseconds') >= 0) return iso.as('milliseconds');
  throw new ValidationError(
    `${what} "${text}" is invalid: expected a duration such as 90s, 5m, 2h, 1d or PT5M`,
  );
}
