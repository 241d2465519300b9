/** Command-line flag text into values: each check names the flag and what was expected, before anything touches the database. */
import { type ExpectedVersion, errorMessage, ValidationError } from '../errors.js';
import { checkInteger } from '../jobs/validate.js';

export function parseInteger(text: string, what: string): number {
  if (!/^-?\d+$/.test(text.trim()))
    throw new ValidationError(`${what} "${text}" is invalid: expected an integer`);
  return checkInteger(Number(text), what);
}

/** A whole number from `min` to `max`, e.g. `--limit`. */
export function parseCount(text: string, what: string, min: number, max: number): number {
  const count = Number(text);
  if (!/^\d+$/.test(text) || count < min || count > max) {
    throw new ValidationError(`${what} "${text}" is invalid: expected a whole number from ${min} to ${max}`);
  }
  return count;
}

export function parsePort(text: string, what = '--port'): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) > 65_535) {
    throw new ValidationError(`${what} ${JSON.stringify(text)} is invalid: expected a port from 0 to 65535`);
  }
  return Number(text);
}

/** JSON text given as a flag; `advice` says how to write it right (quoting, an example). */
export function parseJson(text: string, what: string, advice: string): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ValidationError(`${what} is not valid JSON (${errorMessage(error)}): ${advice}`);
  }
}

/** `--expected-version`: a stream version, `no_stream` or `any`. */
export function parseExpectedVersion(value: string | undefined): ExpectedVersion | undefined {
  if (value === undefined || value === 'any' || value === 'no_stream') return value;
  if (/^\d{1,15}$/.test(value)) return Number(value);
  throw new ValidationError(
    `--expected-version "${value}" is invalid: expected a version >= 0, no_stream or any`,
  );
}
