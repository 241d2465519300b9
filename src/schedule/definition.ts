/**
 * A schedule as the user wrote it, checked once at definition time so a bad cron,
 * an unknown zone or a too-short interval fails before any worker starts.
 */
import { CronExpressionParser } from 'cron-parser';
import { type Duration, IANAZone } from 'luxon';
import { type DurationLike, readDuration } from '../duration.js';
import { errorMessage, ValidationError } from '../errors.js';

export interface ScheduleSpec {
  /** Standard 5-field cron (6 with seconds first), or @hourly/@daily/...; in `timezone`. */
  cron?: string;
  /** A fixed interval, e.g. `{ seconds: 10 }`; ticks are aligned to the Unix epoch. */
  every?: DurationLike;
  /** IANA zone for `cron` (default UTC). */
  timezone?: string;
  /**
   * Which ticks missed while no scheduler ran are still enqueued: `'latest'` (default,
   * only the most recent one) or a window such as `{ hours: 6 }` (every missed tick
   * younger than that, in order). Older ticks are skipped and logged once.
   */
  catchUp?: 'latest' | DurationLike;
  /** A tick enqueued later than this after its time is reported as late (default 1 minute). */
  lateAfter?: DurationLike;
}

export interface Schedule {
  name: string;
  kind: 'cron' | 'every';
  /** The cron text, or the interval as an ISO duration (`PT10S`). */
  expression: string;
  timezone: string;
  everyMs?: number;
  /** `undefined` means 'latest'. */
  catchUpMs?: number;
  lateAfterMs: number;
}

const NAME = /^[A-Za-z0-9_.:/-]{1,200}$/;

export function validateScheduleName(name: unknown): string {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new ValidationError(
      `schedule name ${JSON.stringify(name)} is invalid: use 1-200 letters, digits, '-', '_', '.', ':' and '/'`,
    );
  }
  return name;
}

function duration(schedule: string, field: string, value: unknown): Duration {
  const read = readDuration(value);
  if ('problem' in read)
    throw new ValidationError(`schedule "${schedule}": ${field} is invalid: ${read.problem}`);
  return read.duration;
}

export function defineSchedule(nameInput: unknown, spec: ScheduleSpec): Schedule {
  const name = validateScheduleName(nameInput);
  if (spec === null || typeof spec !== 'object') {
    throw new ValidationError(`schedule "${name}": options must be an object with "cron" or "every"`);
  }
  if ((spec.cron === undefined) === (spec.every === undefined)) {
    throw new ValidationError(`schedule "${name}": give exactly one of "cron" or "every"`);
  }
  const timezone = spec.timezone ?? 'UTC';
  if (typeof timezone !== 'string' || !IANAZone.isValidZone(timezone)) {
    throw new ValidationError(
      `schedule "${name}": timezone ${JSON.stringify(timezone)} is unknown: use an IANA zone such as "Europe/Paris" or "UTC"`,
    );
  }
  const lateAfterMs =
    spec.lateAfter === undefined ? 60_000 : duration(name, 'lateAfter', spec.lateAfter).toMillis();
  let catchUpMs: number | undefined;
  if (spec.catchUp !== undefined && spec.catchUp !== 'latest') {
    catchUpMs = duration(name, 'catchUp', spec.catchUp).toMillis();
    if (catchUpMs < 0) throw new ValidationError(`schedule "${name}": catchUp must not be negative`);
  }
  if (spec.every !== undefined) {
    const every = duration(name, 'every', spec.every);
    const everyMs = every.toMillis();
    if (everyMs < 1_000) {
      throw new ValidationError(
        `schedule "${name}": every ${every.toISO()} is under 1 second: use at least { seconds: 1 }`,
      );
    }
    return {
      name,
      kind: 'every',
      expression: every.toISO() ?? `${everyMs}ms`,
      timezone,
      everyMs,
      catchUpMs,
      lateAfterMs,
    };
  }
  const cron = spec.cron;
  if (typeof cron !== 'string') {
    throw new ValidationError(`schedule "${name}": cron must be a string such as "0 3 * * *"`);
  }
  const fields = cron.trim().split(/\s+/);
  if (!cron.trim().startsWith('@') && fields.length !== 5 && fields.length !== 6) {
    throw new ValidationError(
      `schedule "${name}": cron "${cron}" has ${fields.length} fields: expected 5 (minute hour day month weekday) or 6 (seconds first)`,
    );
  }
  try {
    CronExpressionParser.parse(cron, { tz: timezone, hashSeed: name }).next();
  } catch (error) {
    throw new ValidationError(`schedule "${name}": cron "${cron}" is invalid: ${errorMessage(error)}`);
  }
  return { name, kind: 'cron', expression: cron.trim(), timezone, catchUpMs, lateAfterMs };
}
