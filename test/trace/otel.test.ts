/**
 * Spans with OpenTelemetry installed, asserted on an in-memory exporter with a real worker:
 * one trace from a request's append, through the processor page, to the job the page
 * deferred, its handler (a failed attempt and a retry), and that handler's follow-up; and
 * a schedule tick whose job's span is the tick span's child. Set up as an application
 * would: a tracer provider and the AsyncLocalStorage context manager registered globally.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { mergeMap, toArray } from 'rxjs';
import type { StoredEvent } from '../../src/events/storedEvent.js';
import { isolatedApp, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

describe('OpenTelemetry spans', () => {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const contextManager = new AsyncLocalStorageContextManager();
  let t: TestApp;
  let q: string;
  let spans: ReadableSpan[];
  let requestSpan: { traceId: string; spanId: string };
  let appended: StoredEvent;

  const named = (name: string) => spans.filter((span) => span.name === name);
  const one = (name: string) => {
    const found = named(name);
    assert.equal(
      found.length,
      1,
      `one span "${name}", got ${found.length}: ${spans.map((s) => s.name).join(', ')}`,
    );
    return found[0]!;
  };
  const parentOf = (span: ReadableSpan) => span.parentSpanContext?.spanId;
  const traceparent = (span: ReadableSpan) =>
    `00-${span.spanContext().traceId}-${span.spanContext().spanId}-01`;

  before(async () => {
    trace.setGlobalTracerProvider(provider);
    context.setGlobalContextManager(contextManager.enable());
    t = await isolatedApp('trace_otel', { tracing: 'auto' });
    q = `"${t.schema}"`;
    const keep = { keepSucceededFor: { hours: 1 } };
    const leaf = t.app.task('leaf', keep, async (_args, ctx) => {
      // On the pool, no client: the cause comes from the active context the worker set.
      await t.app.events.append({ stream: 'leaf', type: 'LeafRan', data: { job: ctx.job.id } });
    });
    const handle = t.app.task(
      'handle',
      { ...keep, retry: { attempts: 3, backoff: { initial: { milliseconds: 10 } } } },
      async (_args, ctx) => {
        if (ctx.job.attempt === 1) throw new Error('first attempt fails');
        await ctx.defer(leaf, {});
      },
    );
    t.app.processor(
      'fanout',
      { types: ['Placed'], trigger: { onAppend: { debounce: { milliseconds: 10 } } } },
      (events$, ctx) =>
        events$.pipe(
          toArray(),
          mergeMap(async (page) => {
            for (const event of page)
              await handle.defer({ position: String(event.position) }, { client: ctx.tx });
          }),
        ),
    );
    const ticked = t.app.task('ticked', keep, async () => {});
    t.app.schedule('every-second', { every: { seconds: 1 } }, ticked, {});

    // The application's request: the append is made inside its span.
    const request = trace.getTracer('test').startSpan('request');
    requestSpan = request.spanContext();
    appended = await context.with(trace.setSpan(ROOT_CONTEXT, request), () =>
      t.app.events.append({ stream: 'cart-1', type: 'Placed', data: {} }),
    );
    request.end();

    const controller = new AbortController();
    const running = t.app.run({ concurrency: 2, signal: controller.signal, pollInterval: 100 });
    try {
      await waitFor('leaf and a tick job to succeed', async () => {
        const { rows } = await t.pool.query(
          `SELECT count(DISTINCT task)::int AS n FROM ${q}.jobs WHERE task IN ('leaf', 'ticked') AND status = 'succeeded'`,
        );
        return rows[0].n === 2;
      });
    } finally {
      controller.abort();
      await running;
    }
    await provider.forceFlush();
    spans = exporter.getFinishedSpans();
  });
  after(async () => {
    await t?.cleanup();
    await provider.shutdown();
    contextManager.disable();
    trace.disable();
    context.disable();
  });

  it('the append is a producer span under the request, and the event records its context', async () => {
    const append = spans.find(
      (span) => span.name === 'outbatch append' && parentOf(span) === requestSpan.spanId,
    );
    assert.ok(append, 'an append span whose parent is the request');
    assert.equal(append.spanContext().traceId, requestSpan.traceId);
    assert.equal(append.kind, SpanKind.PRODUCER);
    assert.equal(append.attributes['outbatch.stream'], 'cart-1');
    assert.deepEqual(appended.metadata, { $origin: { traceparent: traceparent(append) } });
  });

  it('the page continues the event’s trace, linked to its processor run', () => {
    const append = spans.find((span) => parentOf(span) === requestSpan.spanId)!;
    const page = one('outbatch processor page fanout');
    assert.equal(page.spanContext().traceId, requestSpan.traceId);
    assert.equal(parentOf(page), append.spanContext().spanId);
    assert.equal(page.attributes['outbatch.processor'], 'fanout');
    assert.equal(page.attributes['outbatch.events.count'], 1);
    assert.equal(page.attributes['outbatch.position.first'], appended.position.toString());
    const runs = named('outbatch job processor:fanout').map((span) => span.spanContext().spanId);
    assert.ok(
      page.links.some((link) => runs.includes(link.context.spanId)),
      'the page links the run job span it ran in',
    );
  });

  it('each run of the deferred job is a span under the page; the failed one has status error', async () => {
    const page = one('outbatch processor page fanout');
    const runs = named('outbatch job handle').sort(
      (a, b) => Number(a.attributes['outbatch.job.attempt']) - Number(b.attributes['outbatch.job.attempt']),
    );
    assert.equal(runs.length, 2);
    const { rows } = await t.pool.query(`SELECT id::text FROM ${q}.jobs WHERE task = 'handle'`);
    for (const [i, run] of runs.entries()) {
      assert.equal(run.spanContext().traceId, requestSpan.traceId);
      assert.equal(parentOf(run), page.spanContext().spanId);
      assert.equal(run.kind, SpanKind.CONSUMER);
      assert.deepEqual(run.attributes, {
        'outbatch.task': 'handle',
        'outbatch.job.id': rows[0].id,
        'outbatch.job.attempt': i + 1,
        'outbatch.queue': 'default',
      });
    }
    assert.equal(runs[0]!.status.code, SpanStatusCode.ERROR);
    assert.equal(runs[0]!.status.message, 'first attempt fails');
    // Each span starts at the claim's reply; the handler's start is an event on it.
    const ns = ([seconds, nanos]: [number, number]) => BigInt(seconds) * 1_000_000_000n + BigInt(nanos);
    for (const run of runs) {
      const handlerStart = run.events.find((event) => event.name === 'outbatch.handler.start');
      assert.ok(handlerStart, 'the handler start is marked');
      assert.ok(
        ns(run.startTime) <= ns(handlerStart.time),
        'the span starts at the claim, before the handler',
      );
    }
    assert.deepEqual(
      runs[0]!.events.map((event) => event.name),
      ['outbatch.handler.start', 'exception'],
    );
    assert.equal(runs[1]!.status.code, SpanStatusCode.UNSET);
  });

  it('the follow-up job runs under the attempt that deferred it, and its append names it', async () => {
    const handle = named('outbatch job handle').find(
      (span) => span.attributes['outbatch.job.attempt'] === 2,
    )!;
    const leaf = one('outbatch job leaf');
    assert.equal(leaf.spanContext().traceId, requestSpan.traceId);
    assert.equal(parentOf(leaf), handle.spanContext().spanId);
    const { rows } = await t.pool.query(
      `SELECT (SELECT id::text FROM ${q}.jobs WHERE task = 'leaf') AS leaf_id,
              (SELECT id::text FROM ${q}.jobs WHERE task = 'handle') AS handle_id,
              (SELECT origin FROM ${q}.jobs WHERE task = 'leaf') AS leaf_origin,
              (SELECT metadata FROM ${q}.events WHERE type = 'LeafRan') AS leaf_event`,
    );
    assert.deepEqual(rows[0].leaf_origin, { job: rows[0].handle_id, traceparent: traceparent(handle) });
    const leafAppend = spans.find(
      (span) => span.name === 'outbatch append' && parentOf(span) === leaf.spanContext().spanId,
    );
    assert.ok(leafAppend, "the leaf's append is a child of the leaf's span");
    assert.deepEqual(rows[0].leaf_event, {
      $origin: { job: rows[0].leaf_id, traceparent: traceparent(leafAppend) },
    });
  });

  it('a schedule tick is a root span, the parent of its job’s run', async () => {
    const ticks = named('outbatch schedule tick every-second');
    assert.ok(ticks.length >= 1);
    for (const tick of ticks) assert.equal(parentOf(tick), undefined);
    const tickIds = new Map(ticks.map((tick) => [tick.spanContext().spanId, tick]));
    const jobs = named('outbatch job ticked');
    assert.ok(jobs.length >= 1);
    for (const job of jobs) {
      const tick = tickIds.get(parentOf(job)!);
      assert.ok(tick, 'the job run is a child of a tick span');
      assert.equal(job.spanContext().traceId, tick.spanContext().traceId);
    }
    const { rows } = await t.pool.query(
      `SELECT origin FROM ${q}.jobs WHERE task = 'ticked' AND status = 'succeeded' ORDER BY id LIMIT 1`,
    );
    assert.equal(rows[0].origin.schedule, 'every-second');
  });
});
