/**
 * An app's tracing: where the cause and trace context of a write come from, and the
 * optional OpenTelemetry bridge.
 *
 * OpenTelemetry is an optional peer dependency. `@opentelemetry/api` is loaded here with a
 * dynamic import, once per app, when the app is created (`tracing: 'auto'`, the default);
 * if it cannot be resolved nothing else is tried, and with `tracing: 'off'` it is never
 * asked for. Nothing else in outbatch imports it.
 *
 * A write's origin, first match wins: the `traceparent`/`tracestate` options (checked, and
 * combined with the cause below); the transaction it goes through, when that is a job's
 * (`ctx.tx`, `ctx.defer`) or a processor page's (`ctx.tx`) — bound here while it is open;
 * the active OpenTelemetry context, when the API is loaded. We keep no AsyncLocalStorage
 * of our own: on Node 20 and 22 the first one switches on promise hooks for the whole
 * process, a cost on every await of every job whether traced or not (Node 20, shared
 * 2-core host: an async function of 10 awaits took 2-5 us, and 8-20 us once run inside an
 * AsyncLocalStorage.run per call); an application that runs an OpenTelemetry context
 * manager has chosen that cost, and we ride on it.
 *
 * The cost when nothing is traced and OpenTelemetry is absent: a write checks `settled`
 * (one boolean) and the two trace options; `origin()` does one WeakMap lookup when a
 * client is given and checks one field (`otel`) for undefined: 40-75 ns per call, measured
 * over 10 million calls (half with a client) on the shared 2-core test host. A write
 * without an origin is then built and sent exactly as before.
 */
import type { Logger } from 'pino';
import type { Queryable } from '../db/queryable.js';
import { ValidationError } from '../errors.js';
import type { Origin } from './origin.js';
import { makeOtelBridge, type OtelApi, type OtelBridge } from './otel.js';
import { checkTraceContext, type TraceContext } from './traceContext.js';

/** `auto`: use `@opentelemetry/api` if it can be imported; `off`: never import it. */
export type TracingMode = 'auto' | 'off';

export interface TraceOptions {
  /** A W3C traceparent to record with what is written (default: the active trace, if any). */
  traceparent?: string;
  /** Its W3C tracestate, if any. */
  tracestate?: string;
}

export interface Tracing {
  /** The OpenTelemetry bridge once loaded and an SDK is registered; else undefined. */
  readonly otel: OtelBridge | undefined;
  /** Loading has ended (at once with `off`): writes check this one boolean before waiting. */
  readonly settled: boolean;
  /** Resolves when loading has ended, whatever its result; never rejects. */
  readonly ready: Promise<void>;
  /** While `client`'s transaction is a job's or a page's, what is written through it names it. */
  bind(client: object, origin: Origin): void;
  unbind(client: object): void;
  /** The origin of a write through `client` with the given options; undefined when nothing names one. */
  origin(trace: TraceContext | undefined, client: Queryable | undefined): Origin | undefined;
}

export function checkTracingMode(value: unknown, where: string): TracingMode {
  if (value === 'auto' || value === 'off') return value;
  throw new ValidationError(`${where} ${JSON.stringify(value)} is invalid: expected 'auto' or 'off'`);
}

/** The `traceparent`/`tracestate` options checked, or undefined when neither is given. */
export function traceOption(options: TraceOptions, where = ''): TraceContext | undefined {
  if (options.traceparent === undefined && options.tracestate === undefined) return undefined;
  return checkTraceContext(options.traceparent, options.tracestate, where);
}

const OTEL_API = '@opentelemetry/api';

export function makeTracing(mode: TracingMode, log: Logger): Tracing {
  const bound = new WeakMap<object, Origin>();
  let otel: OtelBridge | undefined;
  let settled = mode === 'off';
  const ready =
    mode === 'off'
      ? Promise.resolve()
      : // A variable specifier keeps bundlers and tsc from treating it as a static dependency.
        (import(OTEL_API) as Promise<OtelApi>)
          .then(
            (api) => {
              otel = makeOtelBridge(api);
              log.debug('@opentelemetry/api loaded: outbatch emits spans through the registered SDK, if any');
            },
            (error: unknown) => {
              const code = (error as { code?: string }).code;
              if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') return;
              log.warn(
                { err: error },
                '@opentelemetry/api could not be loaded: no spans (trace context is still recorded)',
              );
            },
          )
          .finally(() => {
            settled = true;
          });
  return {
    get otel() {
      return otel?.enabled() ? otel : undefined;
    },
    get settled() {
      return settled;
    },
    ready,
    bind: (client, origin) => bound.set(client, origin),
    unbind: (client) => bound.delete(client),
    origin(trace, client) {
      const cause = (client === undefined ? undefined : bound.get(client)) ?? otel?.active();
      if (trace === undefined) return cause;
      // The given trace context replaces the ambient one; the cause (job, page) stays.
      return cause === undefined ? trace : { ...cause, tracestate: undefined, ...trace };
    },
  };
}
