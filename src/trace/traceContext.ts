/** W3C Trace Context (https://www.w3.org/TR/trace-context/): checking `traceparent` and `tracestate` values. No I/O. */
import { ValidationError } from '../errors.js';

/** A trace context as the W3C headers carry it. */
export interface TraceContext {
  /** `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`. */
  traceparent: string;
  /** Vendor entries, `key=value` separated by commas; kept as given. */
  tracestate?: string;
}

// Version 00 is exactly 55 characters; a later version may append fields after a dash
// (the spec asks parsers to read the first four and keep going). Version ff is invalid.
// Those fields are printable ASCII: `[^\s]` let a NUL or a lone surrogate through, which
// jsonb then refused with its own error instead of ours (test/trace/hostile.test.ts).
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?$/;
const ZERO_TRACE = '0'.repeat(32);
const ZERO_PARENT = '0'.repeat(16);
/** The spec's limit is 32 list members; 512 characters is what it says a carrier must at least keep. */
const TRACESTATE_MAX = 512;
/**
 * A later version may append fields, but not without bound: the origin is added to each
 * event after the maxEventBytes check and to each job's row, so an uncapped traceparent
 * let 100 KB ride past that limit (test/trace/hostile.test.ts). Version 00 is 55.
 */
const TRACEPARENT_MAX = 512;
// Printable ASCII without the characters that would end a header value or a list member badly.
const TRACESTATE = /^[\x20-\x7e]*$/;

/** The trace id of a valid traceparent (its second field). */
export function traceIdOf(traceparent: string): string {
  return traceparent.slice(3, 35);
}

/** The parent (span) id of a valid traceparent (its third field). */
export function spanIdOf(traceparent: string): string {
  return traceparent.slice(36, 52);
}

/** Why `value` is no valid traceparent, or undefined when it is one. */
function traceparentProblem(value: unknown): string | undefined {
  if (typeof value !== 'string') return `is ${describe(value)}: expected a string`;
  if (value.length > TRACEPARENT_MAX)
    return `${JSON.stringify(value.slice(0, 80))}… is invalid: ${value.length} characters, at most ${TRACEPARENT_MAX} characters`;
  const match = TRACEPARENT.exec(value);
  if (!match) return `${JSON.stringify(value.slice(0, 80))} is invalid`;
  const [, version, traceId, parentId, , rest] = match;
  if (version === 'ff') return `${JSON.stringify(value)} has version ff, which the spec forbids`;
  if (version === '00' && rest !== undefined)
    return `${JSON.stringify(value)} is invalid: version 00 has four fields`;
  if (traceId === ZERO_TRACE) return `${JSON.stringify(value)} has an all-zero trace id`;
  if (parentId === ZERO_PARENT) return `${JSON.stringify(value)} has an all-zero parent id`;
  return undefined;
}

/**
 * The trace context given as `traceparent`/`tracestate` options (`where` names them in the
 * error), checked: a malformed value is a ValidationError and nothing is written.
 */
export function checkTraceContext(traceparent: unknown, tracestate: unknown, where: string): TraceContext {
  const problem = traceparentProblem(traceparent);
  if (problem !== undefined) {
    throw new ValidationError(
      `${where}traceparent ${problem}: expected a W3C traceparent such as 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 (version-traceid-parentid-flags, lowercase hex)`,
    );
  }
  if (tracestate === undefined) return { traceparent: traceparent as string };
  if (typeof tracestate !== 'string' || tracestate.length > TRACESTATE_MAX || !TRACESTATE.test(tracestate)) {
    throw new ValidationError(
      `${where}tracestate is ${typeof tracestate === 'string' ? `invalid (${tracestate.length} characters)` : describe(tracestate)}: expected a W3C tracestate of printable ASCII, at most ${TRACESTATE_MAX} characters, such as "vendor=value"`,
    );
  }
  return tracestate === ''
    ? { traceparent: traceparent as string }
    : { traceparent: traceparent as string, tracestate };
}

/**
 * A tracestate read back from storage: the value if it is one we would accept, else
 * undefined (never throws). An origin written from SQL may hold any JSON there; passed on
 * unchecked, 100 KB of it rode on a job's events past maxEventBytes (the origin is added
 * after that check) and on its follow-ups (test/trace/hostile.test.ts).
 */
export function validTracestate(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '' && value.length <= TRACESTATE_MAX && TRACESTATE.test(value)
    ? value
    : undefined;
}

/** A traceparent read back from storage: the value if it is valid, else undefined (never throws). */
export function validTraceparent(value: unknown): string | undefined {
  return traceparentProblem(value) === undefined ? (value as string) : undefined;
}

function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `${typeof value} ${String(value)}`;
}
