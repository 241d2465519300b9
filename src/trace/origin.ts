/**
 * What caused an event or a job: the job whose handler wrote it, or the processor page
 * (its first and last event positions), and the W3C trace context it belongs to. Stored
 * as `metadata.$origin` on events and in the `origin` column of jobs, the same JSON shape
 * in both. No I/O.
 */
import { ValidationError } from '../errors.js';
import { checkTraceContext, traceIdOf, validTraceparent } from './traceContext.js';

export interface Origin {
  traceparent?: string;
  tracestate?: string;
  /** The job whose handler deferred the job or appended the event. */
  job?: string;
  /** The processor whose page did, with `events`: the page's first and last positions. */
  processor?: string;
  events?: [string, string];
  /** The schedule whose tick deferred the job (only with OpenTelemetry, which gives the tick a span). */
  schedule?: string;
}

/** The metadata key an event's origin is stored under. */
export const ORIGIN_KEY = '$origin';

/**
 * The `$origin` a caller wrote into an event's metadata itself: kept as given (it wins over
 * the automatic one), but checked like the options are, so a malformed traceparent is
 * refused before anything is written.
 */
export function checkMetadataOrigin(value: unknown, where: string): void {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ValidationError(
      `${where}.metadata.${ORIGIN_KEY} is reserved for what caused the event: expected an object { traceparent?, tracestate?, job?, processor?, events? }, or leave it out (outbatch fills it in)`,
    );
  }
  const { traceparent, tracestate } = value as Origin;
  if (traceparent !== undefined || tracestate !== undefined) {
    checkTraceContext(traceparent, tracestate, `${where}.metadata.${ORIGIN_KEY}.`);
  }
}

/** Metadata JSON text with the origin added, unless the caller's metadata has one already. */
export function withOrigin(metadata: string, origin: string): string {
  if (metadata === '{}') return `{"${ORIGIN_KEY}":${origin}}`;
  // Only a top-level key counts; a nested "$origin" string is rare enough to parse for.
  if (metadata.includes(`"${ORIGIN_KEY}"`) && ORIGIN_KEY in (JSON.parse(metadata) as object)) return metadata;
  return `{"${ORIGIN_KEY}":${origin},${metadata.slice(1)}`;
}

/** The origin stored with an event (its metadata), or undefined when it has none worth reading. */
export function originOfEvent(metadata: Record<string, unknown> | null | undefined): Origin | undefined {
  const origin = metadata?.[ORIGIN_KEY];
  return origin !== null && typeof origin === 'object' && !Array.isArray(origin)
    ? (origin as Origin)
    : undefined;
}

/**
 * "caused by …" as `jobs show` and the dashboard print it: the job, the processor page or
 * the schedule, then the trace id. Undefined for an origin that names nothing.
 */
export function describeOrigin(origin: Origin | null | undefined): string | undefined {
  if (!origin || typeof origin !== 'object') return undefined;
  const parts: string[] = [];
  if (typeof origin.job === 'string') parts.push(`job ${origin.job}`);
  if (Array.isArray(origin.events) && origin.events.length === 2) {
    const [first, last] = origin.events;
    const events = first === last ? `event ${first}` : `events ${first}-${last}`;
    parts.push(typeof origin.processor === 'string' ? `${events} (processor ${origin.processor})` : events);
  }
  if (typeof origin.schedule === 'string') parts.push(`schedule ${origin.schedule}`);
  const traceparent = validTraceparent(origin.traceparent);
  if (traceparent !== undefined) parts.push(`trace ${traceIdOf(traceparent)}`);
  return parts.length === 0 ? undefined : parts.join(', ');
}
