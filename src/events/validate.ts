import { type ExpectedVersion, ValidationError } from '../errors.js';

/** An event as a service hands it to `append`. */
export interface NewEvent<D = unknown> {
  stream: string;
  type: string;
  /** Any JSON value. */
  data: D;
  /** A JSON object (default `{}`). */
  metadata?: Record<string, unknown>;
  /** Appending the same key again returns the stored event instead of storing a second one. */
  idempotencyKey?: string;
}

export const DEFAULT_MAX_EVENT_BYTES = 1024 * 1024;
const MAX_NAME_LENGTH = 200;

export interface ValidatedEvent {
  stream: string;
  type: string;
  /** `data` and `metadata` as JSON text. */
  data: string;
  metadata: string;
  idempotencyKey?: string;
}

export interface ValidatedBatch {
  /** The JSON array `append_events` takes. */
  json: () => string;
  events: ValidatedEvent[];
  count: number;
  /** Stream names in input order, without repeats. */
  streams: string[];
}

/**
 * Checks every event before anything is sent, so one bad event rejects the whole batch
 * with a message naming where it is, and the database sees only valid JSON.
 */
export function validateEvents(input: unknown, maxEventBytes: number): ValidatedBatch {
  const many = Array.isArray(input);
  const list: unknown[] = many ? (input as unknown[]) : [input];
  const events: ValidatedEvent[] = new Array(list.length);
  const streams = new Set<string>();
  for (let i = 0; i < list.length; i++) {
    const where = many ? `events[${i}]` : 'event';
    const event = list[i] as Partial<NewEvent> | null;
    if (event === null || typeof event !== 'object' || Array.isArray(event)) {
      throw new ValidationError(`${where} is ${describe(event)}: expected an object { stream, type, data }`);
    }
    const stream = checkName(event.stream, `${where}.stream`);
    const type = checkName(event.type, `${where}.type`);
    if (event.data === undefined) {
      throw new ValidationError(`${where}.data is missing: expected a JSON value (use null for "no data")`);
    }
    checkJson(event.data, `${where}.data`);
    if (event.metadata !== undefined) {
      if (event.metadata === null || typeof event.metadata !== 'object' || Array.isArray(event.metadata)) {
        throw new ValidationError(`${where}.metadata is ${describe(event.metadata)}: expected a JSON object`);
      }
      checkJson(event.metadata, `${where}.metadata`);
    }
    const key = event.idempotencyKey;
    if (key !== undefined && (typeof key !== 'string' || key.length === 0 || key.length > MAX_NAME_LENGTH)) {
      throw new ValidationError(
        `${where}.idempotencyKey is ${describe(key)}: expected a string of 1-${MAX_NAME_LENGTH} characters`,
      );
    }
    const data = JSON.stringify(event.data);
    const metadata = event.metadata === undefined ? '{}' : JSON.stringify(event.metadata);
    // String length bounds the UTF-8 size from below and 3x from above: count bytes only near the limit.
    if ((data.length + metadata.length) * 3 > maxEventBytes) {
      const bytes = Buffer.byteLength(data) + Buffer.byteLength(metadata);
      if (bytes > maxEventBytes) {
        throw new ValidationError(
          `${where} (stream "${stream}", type "${type}") is ${bytes} bytes of JSON: the limit is ${maxEventBytes} bytes (maxEventBytes); store large payloads elsewhere and reference them`,
        );
      }
    }
    streams.add(stream);
    events[i] = { stream, type, data, metadata, idempotencyKey: key };
  }
  return { json: () => toAppendEventsJson(events), events, count: list.length, streams: [...streams] };
}

/** The array `append_events` takes, from validated events (built only for that path). */
function toAppendEventsJson(events: ValidatedEvent[]): string {
  const parts = events.map(
    ({ stream, type, data, metadata, idempotencyKey: key }) =>
      `{"stream":${JSON.stringify(stream)},"type":${JSON.stringify(type)},"data":${data},"metadata":${metadata}` +
      (key === undefined ? '}' : `,"idempotency_key":${JSON.stringify(key)}}`),
  );
  return `[${parts.join(',')}]`;
}

/** `expectedVersion` as `append_events` takes it: one value per stream. */
export function expectedVersions(
  expected: ExpectedVersion | Record<string, ExpectedVersion> | undefined,
  streams: string[],
): Record<string, ExpectedVersion> | undefined {
  if (expected === undefined) return undefined;
  if (typeof expected === 'object' && expected !== null) {
    for (const [stream, value] of Object.entries(expected)) {
      if (!streams.includes(stream)) {
        throw new ValidationError(
          `expectedVersion names stream "${stream}" but no event in this append is for it: expected one of ${streams.map((s) => `"${s}"`).join(', ')}`,
        );
      }
      checkExpected(value, `expectedVersion["${stream}"]`);
    }
    return expected;
  }
  checkExpected(expected, 'expectedVersion');
  if (streams.length !== 1) {
    throw new ValidationError(
      `expectedVersion ${JSON.stringify(expected)} needs every event in one stream, but this append has ${streams.length} streams: pass { "<stream>": version } instead`,
    );
  }
  return { [streams[0]!]: expected };
}

function checkExpected(value: unknown, where: string): void {
  if (value === 'any' || value === 'no_stream') return;
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return;
  throw new ValidationError(`${where} is ${describe(value)}: expected a version >= 0, 'no_stream' or 'any'`);
}

/** A high surrogate not followed by a low one, or a low one not preceded by a high one. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Text PostgreSQL can store: no NUL (jsonb and text refuse it), no lone surrogate (not UTF-8). */
function storable(text: string): boolean {
  return !text.includes('\u0000') && !LONE_SURROGATE.test(text);
}

function unstorable(text: string, where: string): string {
  return text.includes('\u0000')
    ? `${where} contains a NUL character (\\u0000), which PostgreSQL cannot store: remove it or encode the value (base64)`
    : `${where} contains a lone UTF-16 surrogate (invalid Unicode), which PostgreSQL cannot store as UTF-8: fix the string or encode it`;
}

function checkName(value: unknown, where: string): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new ValidationError(
      `${where} is ${describe(value)}: expected a non-empty string of at most ${MAX_NAME_LENGTH} characters`,
    );
  }
  if (value.length > MAX_NAME_LENGTH && [...value].length > MAX_NAME_LENGTH) {
    throw new ValidationError(
      `${where} is ${[...value].length} characters long: expected at most ${MAX_NAME_LENGTH} characters`,
    );
  }
  if (!storable(value)) throw new ValidationError(unstorable(value, where));
  return value;
}

function checkJson(value: unknown, path: string): void {
  if (isJson(value, [])) return;
  explainJson(value, path, []);
  throw new ValidationError(`${path} is not plain JSON`); // explainJson names the reason first
}

/**
 * The fast check, without building paths: true when `value` is plain JSON by the rules of
 * explainJson below, which runs only to name the bad value once this says no.
 */
/** Deeper than this is refused: JSON.stringify and PostgreSQL's parser would run out of stack. */
const MAX_DEPTH = 512;

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

function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  if (value === null) return 'null';
  if (typeof value === 'string') return value.length === 0 ? 'an empty string' : JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value)) return 'an array';
  return `a ${typeof value}`;
}
