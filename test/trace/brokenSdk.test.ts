/**
 * An OpenTelemetry SDK that throws (a sampler or a span processor with a bug) costs the
 * spans, never the jobs: each case registers such a provider globally, as an application
 * would, runs a real worker, and counts succeeded jobs.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { BasicTracerProvider, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { isolatedApp, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

function brokenCase(label: string, provider: () => BasicTracerProvider) {
  describe(`a tracer provider whose ${label} throws`, () => {
    const contextManager = new AsyncLocalStorageContextManager();
    let t: TestApp;
    let q: string;
    let registered: BasicTracerProvider;
    before(async () => {
      registered = provider();
      trace.setGlobalTracerProvider(registered);
      context.setGlobalContextManager(contextManager.enable());
      t = await isolatedApp('trace_broken', { tracing: 'auto' });
      q = `"${t.schema}"`;
    });
    after(async () => {
      await t?.cleanup();
      contextManager.disable();
      trace.disable();
      context.disable();
    });

    it('jobs, traced and not, still run and succeed, with no unhandled rejection', async () => {
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown) => unhandled.push(reason);
      process.on('unhandledRejection', onUnhandled);
      // An append through a span that cannot be ended: stored once, and the caller told so.
      const appended = await t.app.events.append({ stream: 'broken-1', type: 'Appended', data: {} });
      assert.equal(appended.stream, 'broken-1');
      const keep = { keepSucceededFor: { hours: 1 } };
      const task = t.app.task('work', keep, async (_args, ctx) => {
        // On the pool: the cause comes from the context the worker runs the handler in.
        await t.app.events.append({ stream: `worked-${ctx.job.id}`, type: 'Worked', data: {} });
      });
      for (let i = 0; i < 3; i++) await task.defer({}, { traceparent: TRACEPARENT });
      await t.pool.query(`SELECT * FROM ${q}.defer_job('work')`);
      await t.pool.query(`SELECT * FROM ${q}.defer_job_with_origin($1::jsonb, 'work')`, [
        JSON.stringify({ traceparent: TRACEPARENT }),
      ]);
      const { rows: deferred } = await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.jobs`);
      const controller = new AbortController();
      const running = t.app.run({ concurrency: 2, signal: controller.signal, pollInterval: 100 });
      try {
        await waitFor(
          'every job to succeed',
          async () => {
            const { rows } = await t.pool.query(
              `SELECT count(*)::int AS n FROM ${q}.jobs WHERE status = 'succeeded'`,
            );
            return rows[0].n === deferred[0].n;
          },
          20_000,
          async () => (await t.pool.query(`SELECT id, status FROM ${q}.jobs ORDER BY id`)).rows,
        );
      } finally {
        controller.abort();
        await running;
        process.off('unhandledRejection', onUnhandled);
      }
      assert.equal(deferred[0].n, 5);
      assert.deepEqual(unhandled.map(String), []);
      const { rows: events } = await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.events`);
      assert.equal(events[0].n, 1 + 5);
      // Each handler's append names its own job, and the traced ones continue their trace.
      const { rows: worked } = await t.pool.query(
        `SELECT e.metadata -> '$origin' AS origin, j.id::text AS job, j.origin AS job_origin
           FROM ${q}.events e JOIN ${q}.jobs j ON e.stream = 'worked-' || j.id WHERE e.type = 'Worked'`,
      );
      assert.equal(worked.length, 5);
      for (const row of worked) {
        assert.equal(row.origin.job, row.job);
        if (row.job_origin) assert.equal(row.origin.traceparent?.slice(3, 35), TRACEPARENT.slice(3, 35));
      }
    });
  });
}

brokenCase(
  'sampler',
  () =>
    new BasicTracerProvider({
      sampler: {
        shouldSample() {
          throw new Error('sampler bug');
        },
        toString: () => 'BrokenSampler',
      },
    }),
);

const throwingProcessor: SpanProcessor = {
  onStart() {},
  onEnd() {
    throw new Error('span processor bug');
  },
  forceFlush: async () => {},
  shutdown: async () => {},
};
brokenCase('span processor', () => new BasicTracerProvider({ spanProcessors: [throwingProcessor] }));
