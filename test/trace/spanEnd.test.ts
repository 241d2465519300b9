/**
 * A job's span ends when the worker is done with the run, even when the handler is not: an
 * operator's cancel, or a shutdown that outlives the handler's shutdown timeout, both of a
 * handler that ignores its signal. A span never ended is never exported, and the run
 * vanished from the trace. Real worker, in-memory exporter, spans counted.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { isolatedApp, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

describe("a job's span, when the handler ignores its signal", () => {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const contextManager = new AsyncLocalStorageContextManager();
  let t: TestApp;
  let q: string;
  /** Releases the stuck handlers at the end, so nothing is left running. */
  let release: () => void = () => {};
  const stuck = new Promise<void>((resolve) => {
    release = resolve;
  });

  before(async () => {
    trace.setGlobalTracerProvider(provider);
    context.setGlobalContextManager(contextManager.enable());
    t = await isolatedApp('trace_span_end', { tracing: 'auto' });
    q = `"${t.schema}"`;
  });
  after(async () => {
    release();
    await t?.cleanup();
    await provider.shutdown();
    contextManager.disable();
    trace.disable();
    context.disable();
  });

  it('ends at a cancel and at a shutdown past its timeout, marked as such, once', async () => {
    const started = new Set<string>();
    const task = t.app.task('stubborn', {}, async (_args, ctx) => {
      started.add(ctx.job.id);
      await stuck; // ignores ctx.signal
    });
    const cancelled = await task.defer({});
    const interrupted = await task.defer({});
    assert.ok(cancelled.enqueued && interrupted.enqueued);
    const controller = new AbortController();
    const running = t.app.run({
      concurrency: 2,
      signal: controller.signal,
      pollInterval: 100,
      shutdownTimeout: { milliseconds: 200 },
    });
    try {
      await waitFor('both handlers to start', async () => started.size === 2);
      await t.app.jobs.cancel([cancelled.id]);
      await waitFor('the cancelled run to be dropped', async () => {
        const { rows } = await t.pool.query(`SELECT status FROM ${q}.jobs WHERE id = $1`, [cancelled.id]);
        return rows[0].status === 'cancelled';
      });
      await waitFor("the cancelled run's span to end", async () =>
        exporter.getFinishedSpans().some((span) => span.attributes['outbatch.job.id'] === cancelled.id),
      );
    } finally {
      controller.abort();
      await running;
    }
    const ended = (id: string) =>
      exporter.getFinishedSpans().filter((span) => span.attributes['outbatch.job.id'] === id);
    assert.equal(ended(cancelled.id).length, 1);
    assert.equal(ended(cancelled.id)[0]!.attributes['outbatch.job.cancelled'], true);
    assert.equal(ended(interrupted.id).length, 1, 'the span of the run left at shutdown ended');
    assert.equal(ended(interrupted.id)[0]!.attributes['outbatch.job.interrupted'], true);
    // The handlers return later: their spans are not ended (nor exported) a second time.
    release();
    await new Promise((resolve) => setImmediate(resolve));
    await provider.forceFlush();
    assert.equal(ended(cancelled.id).length + ended(interrupted.id).length, 2);
  });
});
