/** Checking events before they are appended: shape, JSON, size. */
import { type ExpectedVersion, ValidationError } from '../errors.js';
import { checkJson, storable, unstorable } from '../json.js';
import { checkMetadataOrigin, ORIGIN_KEY } from '../trace/origin.js';
import { MAX_TYPE_VERSION } from './upcast.js';

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
  /**
   * The version of the type's shape `data` is in (a whole number >= 1). Default: the
   * type's current version in this app's upcasters (docs/upcasting.md), 1 without any.
   */
  version?: number;
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
  /** The type version recorded with the event. */
  version: number;
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
export function validateEvents(
  input: unknown,
  maxEventBytes: number,
  /** The version recorded for an event that does not give one: its type's current version. */
  currentVersion: (type: string) => number = () => 1,
): ValidatedBatch {
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
      if (ORIGIN_KEY in event.metadata) checkMetadataOrigin(event.metadata[ORIGIN_KEY], where);
    }
    const key = event.idempotencyKey;
    if (key !== undefined && (typeof key !== 'string' || key.length === 0 || key.length > MAX_NAME_LENGTH)) {
      throw new ValidationError(
        `${where}.idempotencyKey is ${describe(key)}: expected a string of 1-${MAX_NAME_LENGTH} characters`,
      );
    }
    const version = event.version ?? currentVersion(type);
    if (!Number.isSafeInteger(version) || version < 1 || version > MAX_TYPE_VERSION) {
      throw new ValidationError(
        `${where}.version is ${describe(version)}: expected a whole number >= 1 (the version of the type's shape its data is in), or none for the current one`,
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
    events[i] = { stream, type, data, metadata, idempotencyKey: key, version };
  }
  return { json: () => toAppendEventsJson(events), events, count: list.length, streams: [...streams] };
}

/** The array `append_events` takes, from validated events (built only for that path). */
function toAppendEventsJson(events: ValidatedEvent[]): string {
  const parts = events.map(
    ({ stream, type, data, metadata, idempotencyKey: key, version }) =>
      `{"stream":${JSON.stringify(stream)},"type":${JSON.stringify(type)},"data":${data},"metadata":${metadata},"type_version":${version}` +
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

function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  if (value === null) return 'null';
  if (typeof value === 'string') return value.length === 0 ? 'an empty string' : JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value)) return 'an array';
  return `a ${typeof value}`;
}
