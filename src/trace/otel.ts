/**
 * outbatch's spans, over `@opentelemetry/api` handed in by tracing.ts (loaded there with a
 * dynamic import, once): this file imports only its types, which compile away. It is used
 * only while an SDK has registered a tracer provider (`enabled`); whether a span is then
 * recorded and exported is that SDK's business (its sampler): a non-recording span still
 * carries its parent's context, so a trace that came in is passed on.
 *
 * Spans (docs/tracing.md): `outbatch append` (producer), `outbatch job <task>` (consumer,
 * one per run of a claimed job, its parent the trace that deferred the job), `outbatch
 * processor page <name>`, `outbatch schedule tick <name>`.
 */
import type * as Api from '@opentelemetry/api';
import type { StoredEvent } from '../events/storedEvent.js';
import { type Origin, originOfEvent } from './origin.js';
import { validTraceparent, validTracestate } from './traceContext.js';

export type OtelApi = typeof Api;

/** The span of one run of one claimed job. */
export interface JobSpan {
  /** What the job's follow-ups (jobs it defers, events it appends) record as their origin. */
  readonly origin: Origin;
  /** Runs the handler with the span active (and the job as the cause of what it writes). */
  run<T>(fn: () => T): T;
  /** Once: later calls do nothing (the worker may be done with a run before its handler is). */
  end(outcome: { error?: unknown; interrupted?: boolean; cancelled?: boolean }): void;
}

export interface JobAttributes {
  id: string;
  task: string;
  queue: string;
  attempts: number;
  /** When the worker received the claim (epoch ms): the span starts there, not at the handler. */
  claimedAtMs?: number;
}

export type OtelBridge = ReturnType<typeof makeOtelBridge>;

/** A page links at most this many events' traces (the SDK's default link limit is 128). */
const PAGE_LINKS_MAX = 64;

export function makeOtelBridge(api: OtelApi) {
  const tracer = api.trace.getTracer('outbatch');
  // Our cause (job id, processor page) rides in the OpenTelemetry context beside the span,
  // so that an append or defer made on the pool inside a handler still names its job when
  // the application runs a context manager (AsyncLocalStorage-based, as the Node SDK's).
  const CAUSE = api.createContextKey('outbatch.origin');

  function traceparentOf(span: Api.SpanContext): string | undefined {
    if (!api.isSpanContextValid(span)) return undefined;
    const flags = (span.traceFlags & 0xff).toString(16).padStart(2, '0');
    return `00-${span.traceId}-${span.spanId}-${flags}`;
  }

  /** The origin `cause` with the trace context of `span` (or of `cause` itself when the span has none). */
  function originWith(cause: Origin | undefined, span: Api.SpanContext): Origin | undefined {
    const traceparent = traceparentOf(span);
    if (traceparent === undefined) return cause;
    const tracestate = span.traceState?.serialize();
    return tracestate
      ? { ...cause, traceparent, tracestate }
      : { ...cause, traceparent, tracestate: undefined };
  }

  function spanContextOf(origin: Origin | undefined): Api.SpanContext | undefined {
    const traceparent = validTraceparent(origin?.traceparent);
    if (traceparent === undefined) return undefined;
    // Only a checked string: an origin written from SQL (defer_job_with_origin,
    // append_events) may hold any JSON there, and createTraceState(5) throws ("split is not
    // a function"), which left a claimed job in `doing` and failed every page holding such
    // an event (test/trace/hostile.test.ts).
    const tracestate = validTracestate(origin?.tracestate);
    return {
      traceId: traceparent.slice(3, 35),
      spanId: traceparent.slice(36, 52),
      traceFlags: Number.parseInt(traceparent.slice(53, 55), 16) & 1,
      isRemote: true,
      traceState: tracestate === undefined ? undefined : api.createTraceState(tracestate),
    };
  }

  /** `base` with the stored trace context of `origin` as the parent, when it has one. */
  function contextFrom(origin: Origin | undefined, base: Api.Context): Api.Context {
    const span = spanContextOf(origin);
    return span ? api.trace.setSpanContext(base, span) : base;
  }

  /**
   * A span started, or undefined when the SDK threw. Spans are the application's, jobs and
   * pages are ours: an SDK with a bug (a sampler, a span processor that throws) costs the
   * spans, never the work. Before this, a throwing sampler left each claimed job in `doing`
   * (thrown in RunningJob's constructor) and a throwing span processor's end() rejected
   * unhandled after every job (a crash under Node's default) and failed an append that had
   * committed (test/trace/brokenSdk.test.ts). Reported through OpenTelemetry's own diag
   * logger, where an SDK's problems go. In place of the span: a non-recording one (the
   * API's own, no SDK code) carrying the parent's context, as a span the sampler drops
   * would: the trace is passed on and the job still runs in a context of its own (with
   * no span at all, a handler would run in whatever context started it, and what it
   * appends on the pool could name another job as its cause).
   */
  function start(name: string, options: Api.SpanOptions, parent: Api.Context): Api.Span {
    try {
      return tracer.startSpan(name, options, parent);
    } catch (error) {
      api.diag.error(`outbatch: the tracer could not start span "${name}": none recorded`, error);
      return api.trace.wrapSpanContext(api.trace.getSpanContext(parent) ?? api.INVALID_SPAN_CONTEXT);
    }
  }

  /** Ends `span`, recording `error` if any; never throws (see start). */
  function end(span: Api.Span, error?: unknown, interrupted?: boolean, cancelled?: boolean): void {
    try {
      if (cancelled) span.setAttribute('outbatch.job.cancelled', true);
      else if (interrupted) span.setAttribute('outbatch.job.interrupted', true);
      else if (error !== undefined) {
        span.recordException(error instanceof Error ? error : String(error));
        span.setStatus({
          code: api.SpanStatusCode.ERROR,
          message: error instanceof Error ? error.message : String(error),
        });
      }
      span.end();
    } catch (thrown) {
      api.diag.error('outbatch: the tracer could not end a span', thrown);
    }
  }

  /** `fn` inside `span` (active, with `cause`), the span ended when it settles. */
  async function inSpan<T>(
    span: Api.Span,
    parent: Api.Context,
    cause: Origin | undefined,
    fn: (origin: Origin | undefined) => Promise<T>,
  ): Promise<T> {
    const origin = originWith(cause, span.spanContext());
    let active = api.trace.setSpan(parent, span);
    if (cause) active = active.setValue(CAUSE, cause);
    let result: T;
    try {
      result = await api.context.with(active, () => fn(origin));
    } catch (error) {
      end(span, error);
      throw error;
    }
    end(span);
    return result;
  }

  return {
    /**
     * Whether an SDK registered a tracer provider. Until one does (prom-client alone brings
     * the API into most installs), outbatch takes the path it takes without OpenTelemetry
     * instead of making non-recording spans: a global lookup and two reads per check. By
     * the delegate's class name, not instanceof: the API's ESM and CommonJS builds are
     * separate copies of its classes (the registered provider is shared through a global).
     */
    enabled(): boolean {
      const provider = api.trace.getTracerProvider() as { getDelegate?: () => object };
      const delegate = provider.getDelegate?.();
      return delegate === undefined || delegate.constructor.name !== 'NoopTracerProvider';
    },

    /** The cause and trace context of the active OpenTelemetry context, if any. */
    active(): Origin | undefined {
      const active = api.context.active();
      const cause = active.getValue(CAUSE) as Origin | undefined;
      const span = api.trace.getSpanContext(active);
      return span ? originWith(cause, span) : cause;
    },

    /**
     * An append in a producer span: a child of the given trace context (an option, or the
     * transaction's job or page), else of the active span. The events record the span's
     * own context, so what reads them continues this trace.
     */
    append<T>(
      origin: Origin | undefined,
      attributes: Api.Attributes,
      fn: (origin: Origin | undefined) => Promise<T>,
    ): Promise<T> {
      const parent = contextFrom(origin, api.context.active());
      const span = start('outbatch append', { kind: api.SpanKind.PRODUCER, attributes }, parent);
      return inSpan(span, parent, origin, fn);
    },

    /** One run of a claimed job, a consumer span whose parent is the trace that deferred the job. */
    startJob(job: JobAttributes, stored: Origin | null): JobSpan {
      const parent = contextFrom(stored ?? undefined, api.ROOT_CONTEXT);
      const span = start(
        `outbatch job ${job.task}`,
        {
          kind: api.SpanKind.CONSUMER,
          // claim → handler: the time a job waited in the worker's buffer for a free slot is
          // in its span, and the handler's start is an event on it.
          startTime: job.claimedAtMs,
          attributes: {
            'outbatch.task': job.task,
            'outbatch.job.id': job.id,
            'outbatch.job.attempt': job.attempts,
            'outbatch.queue': job.queue,
          },
        },
        parent,
      );
      if (job.claimedAtMs !== undefined) {
        try {
          span.addEvent('outbatch.handler.start');
        } catch (error) {
          api.diag.error('outbatch: the tracer could not add an event to a span', error);
        }
      }
      const cause: Origin = { job: job.id };
      // A span the sampler drops is non-recording and carries the stored context: passed on as it came.
      const origin = originWith(cause, span.spanContext()) ?? cause;
      const active = api.trace.setSpan(parent, span).setValue(CAUSE, cause);
      let ended = false;
      return {
        origin,
        run: (fn) => api.context.with(active, fn),
        end({ error, interrupted, cancelled }) {
          if (ended) return;
          ended = true;
          end(span, error, interrupted, cancelled);
        },
      };
    },

    /**
     * A processor page. Its parent is the trace of the page's first traced event, so one
     * trace runs from an append through the page to what the page defers and appends; the
     * other events' traces (up to PAGE_LINKS_MAX) and the processor run's own span are links.
     */
    page<T>(
      processor: string,
      version: number,
      events: StoredEvent[],
      cause: Origin,
      fn: (origin: Origin | undefined) => Promise<T>,
    ): Promise<T> {
      const run = api.trace.getSpanContext(api.context.active());
      const links: Api.Link[] = run && api.isSpanContextValid(run) ? [{ context: run }] : [];
      let parentSpan: Api.SpanContext | undefined;
      const seen = new Set<string>();
      for (const event of events) {
        const traced = spanContextOf(originOfEvent(event.metadata));
        if (!traced || seen.has(traced.spanId)) continue;
        seen.add(traced.spanId);
        if (!parentSpan) parentSpan = traced;
        else if (links.length < PAGE_LINKS_MAX) links.push({ context: traced });
      }
      const parent = parentSpan ? api.trace.setSpanContext(api.ROOT_CONTEXT, parentSpan) : api.ROOT_CONTEXT;
      const span = start(
        `outbatch processor page ${processor}`,
        {
          kind: api.SpanKind.CONSUMER,
          links,
          attributes: {
            'outbatch.processor': processor,
            'outbatch.processor.version': version,
            'outbatch.events.count': events.length,
            'outbatch.position.first': events[0]!.position.toString(),
            'outbatch.position.last': events.at(-1)!.position.toString(),
          },
        },
        parent,
      );
      return inSpan(span, parent, cause, fn);
    },

    /** One schedule tick's enqueue: a root span, the parent of the tick's job. */
    tick<T>(schedule: string, tick: Date, fn: (origin: Origin | undefined) => Promise<T>): Promise<T> {
      const span = start(
        `outbatch schedule tick ${schedule}`,
        {
          kind: api.SpanKind.PRODUCER,
          attributes: { 'outbatch.schedule': schedule, 'outbatch.schedule.tick': tick.toISOString() },
        },
        api.ROOT_CONTEXT,
      );
      return inSpan(span, api.ROOT_CONTEXT, { schedule }, fn);
    },
  };
}
