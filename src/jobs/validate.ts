/**
 * Checks and normalises what callers pass to `app.task` and `defer`. Every message names
 * the option, what it got, and what was expected; nothing reaches the database before
 * these pass.
 */
import { DateTime } from 'luxon';
import { ValidationError } from '../errors.js';
import { checkJson } from '../json.js';

/** A Date, a luxon DateTime, or an ISO 8601 string with an offset. */
export type TimeInput = Date | DateTime | string;

const QUEUE = /^[A-Za-z0-9_.-]{1,100}$/;
const INT_MAX = 2_147_483_647;

export function checkTaskName(name: unknown): string {
  if (typeof name !== 'string' || name.length === 0 || name.length > 200) {
    throw new ValidationError(`task name ${JSON.stringify(name)} is invalid: expected 1-200 characters`);
  }
  return name;
}

export function checkQueue(queue: unknown, what = 'queue'): string {
  if (typeof queue !== 'string' || !QUEUE.test(queue)) {
    throw new ValidationError(
      `${what} name ${JSON.stringify(queue)} is invalid: use 1-100 letters, digits, '-', '_' and '.'`,
    );
  }
  return queue;
}

export function checkInteger(value: unknown, what: string, min = -INT_MAX, max = INT_MAX): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ValidationError(
      `${what} ${JSON.stringify(value)} is invalid: expected an integer from ${min} to ${max}`,
    );
  }
  return value;
}

export function checkLockName(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 500) {
    throw new ValidationError(
      `${what} ${JSON.stringify(value)} is invalid: expected a non-empty string (at most 500 characters)`,
    );
  }
  return value;
}

/** A job's group key: the same bounds as the jobs.group_key column. */
export function checkGroup(value: unknown, what = 'group'): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 200) {
    throw new ValidationError(
      `${what} ${JSON.stringify(value)} is invalid: expected a non-empty string (at most 200 characters)`,
    );
  }
  return value;
}

export function toDate(value: unknown, what: string): Date {
  let date: Date | undefined;
  if (value instanceof Date) date = value;
  else if (DateTime.isDateTime(value)) date = value.isValid ? value.toJSDate() : undefined;
  else if (typeof value === 'string') {
    const parsed = DateTime.fromISO(value, { setZone: true });
    date = parsed.isValid ? parsed.toJSDate() : undefined;
  }
  if (!date || Number.isNaN(date.getTime())) {
    throw new ValidationError(
      `${what} ${JSON.stringify(value)} is invalid: expected a Date, a luxon DateTime or an ISO 8601 time such as 2030-01-31T09:00:00Z`,
    );
  }
  return date;
}

/** Job arguments go to a jsonb column: anything JSON can hold. `undefined` becomes `{}`. */
export function argsToJson(args: unknown, task: string): string {
  if (args === undefined) return '{}';
  // What JSON.stringify would silently drop (functions, NaN) or PostgreSQL refuse (NUL).
  try {
    checkJson(args, 'args');
  } catch (error) {
    throw new ValidationError(`arguments for task "${task}" cannot be stored: ${(error as Error).message}`);
  }
  let json: string | undefined;
  try {
    json = JSON.stringify(args);
  } catch (error) {
    throw new ValidationError(
      `arguments for task "${task}" cannot be stored: ${(error as Error).message}; expected JSON-serialisable values`,
    );
  }
  if (json === undefined) {
    throw new ValidationError(
      `arguments for task "${task}" cannot be stored: expected a JSON value, got ${typeof args}`,
    );
  }
  return json;
}
