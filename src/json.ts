/**
 * What PostgreSQL can store as jsonb or text, checked before a write so bad input gets
 * one line naming the bad value (its path) and nothing is written. Shared by events
 * (data, metadata, names) and jobs (args).
 */
import { ValidationError } from './errors.js';

/** A high surrogate not followed by a low one, or a low one not preceded by a high one. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Text PostgreSQL can store: no NUL (jsonb and text refuse it), no lone surrogate (not UTF-8). */
export function storable(text: string): boolean {
  return !text.includes('\u0000') && !LONE_SURROGATE.test(text);
}

export function unstorable(text: string, where: string): string {
  return text.includes('\u0000')
    ? `${where} contains a NUL character (\\u0000), which PostgreSQL cannot store: remove it or encode the value (base64)`
    : `${where} contains a lone UTF-16 surrogate (invalid Unicode), which PostgreSQL cannot store as UTF-8: fix the string or encode it`;
}

/** Throws a ValidationError naming the first value at `path` that is not plain, storable JSON. */
export function checkJson(value: unknown, path: string): void {
  if (isJson(value, [])) return;
  explainJson(value, path, []);
  throw new ValidationError(`${path} is not plain JSON`); // explainJson names the reason first
}

/** Deeper than this is refused: JSON.stringify and PostgreSQL's parser would run out of stack. */
const MAX_DEPTH = 512;

/**
 * The fast check, without building paths: true when `value` is plain JSON by the rules of
 * explainJson below, which runs only to name the bad value once this says no.
 */
function isJson(value: unknown, ancestors: object[]): boolean {
  switch (typeof value) {
    case 'string':
      return storable(value);
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(value);
    case 'object':
      break;
    default:
      return false;
  }
  if (value === null) return true;
  const object = value as Record<string, unknown>;
  if (typeof object.toJSON === 'function') return true;
  if (value instanceof Map || value instanceof Set || ancestors.includes(object)) return false;
  if (ancestors.length >= MAX_DEPTH) return false;
  ancestors.push(object);
  if (Array.isArray(object)) {
    for (const item of object) if (!isJson(item, ancestors)) return false;
  } else {
    for (const key in object) {
      if (!Object.hasOwn(object, key)) continue;
      const child = object[key];
      if (!storable(key) || (child !== undefined && !isJson(child, ancestors))) return false;
    }
  }
  ancestors.pop();
  return true;
}

/**
 * Rejects what JSON.stringify would silently drop or change (functions, undefined in
 * arrays, NaN) or cannot write (BigInt, cycles), and what jsonb cannot store (NUL).
 * `ancestors` holds the objects on the current path: a cycle, not a shared reference.
 */
function explainJson(value: unknown, path: string, ancestors: object[]): void {
  switch (typeof value) {
    case 'string':
      if (!storable(value)) throw new ValidationError(unstorable(value, path));
      return;
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value)) {
        throw new ValidationError(`${path} is ${value}: JSON has no ${value}; use null or a string`);
      }
      return;
    case 'bigint':
      throw new ValidationError(
        `${path} is a BigInt (${value}n), which JSON cannot represent: convert it to a string or a number`,
      );
    case 'undefined':
      throw new ValidationError(`${path} is undefined: JSON has no undefined; use null or leave the key out`);
    case 'function':
    case 'symbol':
      throw new ValidationError(`${path} is a ${typeof value}, which is not JSON: expected data only`);
  }
  if (value === null) return;
  const object = value as Record<string, unknown>;
  // Dates and other values with toJSON become what toJSON returns, like JSON.stringify.
  if (typeof object.toJSON === 'function') return;
  if (value instanceof Map || value instanceof Set) {
    throw new ValidationError(
      `${path} is a ${value.constructor.name}, which JSON.stringify turns into {}: convert it to an object or array`,
    );
  }
  if (ancestors.includes(object)) {
    throw new ValidationError(
      `${path} refers back to an enclosing object (a cycle): JSON cannot represent it`,
    );
  }
  if (ancestors.length >= MAX_DEPTH) {
    throw new ValidationError(
      `${path.slice(0, 60)}… is nested more than ${MAX_DEPTH} levels deep: flatten the data`,
    );
  }
  ancestors.push(object);
  if (Array.isArray(object)) {
    for (let i = 0; i < object.length; i++) explainJson(object[i], `${path}[${i}]`, ancestors);
  } else {
    for (const key of Object.keys(object)) {
      if (!storable(key)) throw new ValidationError(unstorable(key, `a key of ${path}`));
      const child = object[key];
      // An undefined property is left out, as JSON.stringify does (optional fields).
      if (child !== undefined) explainJson(child, `${path}.${key}`, ancestors);
    }
  }
  ancestors.pop();
}
