/**
 * Trace context written by something other than outbatch's TypeScript API (psql, another
 * language, a trigger) is read back by the worker and by processors: a malformed value
 * there must cost the trace, never the job or the page. Run with OpenTelemetry registered,
 * as an application would, with a real worker and counted outcomes.
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
import { mergeMap, toArray } from 'rxjs';
import { isolatedApp, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

describe('hostile stored trace context, with OpenTelemetry', () => {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const contextManager = new AsyncLocalStorageContextManager();
  let t: TestApp;
  let q: string;

  before(async () => {
    trace.setGlobalTracerProvider(provider);
    context.setGlobalContextManager(contextManager.enable());
    t = await isolatedApp('trace_hostile', { tracing: 'auto' });
    q = `"${t.schema}"`;
  });
  after(async () => {
    await t?.cleanup();
    await provider.shutdown();
    contextManager.disable();
    trace.disable();
    context.disable();
  });

  it('a job deferred from SQL with a non-string tracestate runs, and so do the jobs after it', async () => {
    const keep = { keepSucceededFor: { hours: 1 } };
    const followUp = t.app.task('follow_up', keep, async () => {});
    t.app.task('sql_traced', keep, async (_args, ctx) => {
      await ctx.defer(followUp, {});
    });
    // check_job_origin (schema/035) checks the traceparent only: any JSON passes as tracestate.
    for (const tracestate of ['5', 'true', '{"a":1}', '["x"]']) {
      await t.pool.query(
        `SELECT * FROM ${q}.defer_job_with_origin(jsonb_build_object('traceparent', $1::text, 'tracestate', $2::jsonb), 'sql_traced')`,
        [TRACEPARENT, tracestate],
      );
    }
    await t.pool.query(`SELECT * FROM ${q}.defer_job('sql_traced')`);
    const controller = new AbortController();
    const running = t.app.run({ concurrency: 2, signal: controller.signal, pollInterval: 100 });
    try {
      await waitFor(
        'the five jobs and their follow-ups to succeed',
        async () => {
          const { rows } = await t.pool.query(
            `SELECT count(*)::int AS n FROM ${q}.jobs WHERE status = 'succeeded'`,
          );
          return rows[0].n === 10;
        },
        20_000,
        async () => (await t.pool.query(`SELECT id, task, status, origin FROM ${q}.jobs ORDER BY id`)).rows,
      );
    } finally {
      controller.abort();
      await running;
    }
    // The follow-ups continue the stored trace, but carry no tracestate that is not a string.
    const { rows } = await t.pool.query(
      `SELECT count(*)::int AS n FROM ${q}.jobs WHERE task = 'follow_up' AND origin ? 'tracestate' AND jsonb_typeof(origin -> 'tracestate') <> 'string'`,
    );
    assert.equal(rows[0].n, 0);
  });

  it('concurrent jobs, and batches beside them, never name one another as the cause of an append on the pool', async () => {
    const keep = { keepSucceededFor: { hours: 1 } };
    const solo = t.app.task('solo', keep, async (_args, ctx) => {
      for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
      await t.app.events.append({ stream: `solo-${ctx.job.id}`, type: 'Solo', data: {} });
    });
    const bulk = t.app.task(
      'bulk',
      { ...keep, batch: { size: 3, maxWait: { milliseconds: 50 } } },
      async (jobs) => {
        await new Promise((resolve) => setImmediate(resolve));
        await t.app.events.append({ stream: `bulk-${jobs[0]!.id}`, type: 'Bulk', data: {} });
      },
    );
    for (let i = 0; i < 12; i++) {
      await solo.defer({}, { traceparent: `00-${String(i + 1).padStart(32, 'a')}-b7ad6b7169203331-01` });
      await bulk.defer({});
    }
    const controller = new AbortController();
    const running = t.app.run({ concurrency: 4, signal: controller.signal, pollInterval: 100 });
    try {
      await waitFor('the 24 jobs to succeed', async () => {
        const { rows } = await t.pool.query(
          `SELECT count(*)::int AS n FROM ${q}.jobs WHERE task IN ('solo', 'bulk') AND status = 'succeeded'`,
        );
        return rows[0].n === 24;
      });
    } finally {
      controller.abort();
      await running;
    }
    const { rows: solos } = await t.pool.query(
      `SELECT e.metadata -> '$origin' AS origin, j.id::text AS id, j.origin ->> 'traceparent' AS traceparent
         FROM ${q}.events e JOIN ${q}.jobs j ON e.stream = 'solo-' || j.id`,
    );
    assert.equal(solos.length, 12);
    for (const row of solos) {
      assert.equal(row.origin.job, row.id);
      assert.equal(row.origin.traceparent.slice(3, 35), row.traceparent.slice(3, 35));
    }
    const { rows: bulks } = await t.pool.query(
      `SELECT metadata -> '$origin' AS origin FROM ${q}.events WHERE type = 'Bulk'`,
    );
    assert.ok(bulks.length >= 4);
    for (const row of bulks) assert.equal(row.origin?.job, undefined, JSON.stringify(row.origin));
  });

  it('a processor reads a page whose event, appended from SQL, has a non-string tracestate', async () => {
    const seen: string[] = [];
    t.app.processor(
      'hostile_page',
      { types: ['Hostile'], trigger: { onAppend: { debounce: { milliseconds: 10 } } } },
      (events$) =>
        events$.pipe(
          toArray(),
          mergeMap(async (page) => {
            for (const event of page) seen.push(String(event.position));
          }),
        ),
    );
    await t.pool.query(`SELECT * FROM ${q}.append_events($1::jsonb)`, [
      JSON.stringify([
        {
          stream: 'h-1',
          type: 'Hostile',
          data: {},
          metadata: { $origin: { traceparent: TRACEPARENT, tracestate: 5 } },
        },
        {
          stream: 'h-2',
          type: 'Hostile',
          data: {},
          metadata: { $origin: { traceparent: TRACEPARENT.replace('b7ad', 'c7ad'), tracestate: ['x'] } },
        },
        { stream: 'h-3', type: 'Hostile', data: {}, metadata: { $origin: { traceparent: 7, events: 'x' } } },
      ]),
    ]);
    const controller = new AbortController();
    const running = t.app.run({ concurrency: 1, signal: controller.signal, pollInterval: 100 });
    try {
      await waitFor('the processor to read the three events', async () => seen.length >= 3);
    } finally {
      controller.abort();
      await running;
    }
    assert.equal(new Set(seen).size, 3);
  });
});

describe('hostile stored trace context, without OpenTelemetry', () => {
  let t: TestApp;
  let q: string;
  before(async () => {
    t = await isolatedApp('trace_hostile_off', { tracing: 'off' });
    q = `"${t.schema}"`;
  });
  after(async () => {
    await t?.cleanup();
  });

  it("a job's follow-up passes on the stored trace, but not a tracestate that is no string", async () => {
    const keep = { keepSucceededFor: { hours: 1 } };
    const followUp = t.app.task('follow_up', keep, async () => {});
    t.app.task('sql_traced', keep, async (_args, ctx) => {
      await ctx.defer(followUp, {});
    });
    await t.pool.query(
      `SELECT * FROM ${q}.defer_job_with_origin(jsonb_build_object('traceparent', $1::text, 'tracestate', '{"a":1}'::jsonb), 'sql_traced')`,
      [TRACEPARENT],
    );
    const controller = new AbortController();
    const running = t.app.run({ concurrency: 1, signal: controller.signal, pollInterval: 100 });
    try {
      await waitFor('the job and its follow-up to succeed', async () => {
        const { rows } = await t.pool.query(
          `SELECT count(*)::int AS n FROM ${q}.jobs WHERE status = 'succeeded'`,
        );
        return rows[0].n === 2;
      });
    } finally {
      controller.abort();
      await running;
    }
    const { rows } = await t.pool.query(`SELECT origin FROM ${q}.jobs WHERE task = 'follow_up'`);
    assert.equal(rows.length, 1);
    assert.equal(rows[0].origin.traceparent, TRACEPARENT);
    assert.equal(rows[0].origin.tracestate, undefined);
  });
});

describe('an oversized traceparent of a later version', () => {
  let t: TestApp;
  let q: string;
  before(async () => {
    t = await isolatedApp('trace_hostile_size', { tracing: 'off', events: { maxEventBytes: 4096 } });
    q = `"${t.schema}"`;
  });
  after(async () => {
    await t?.cleanup();
  });

  it('is refused in one line with nothing written, instead of slipping past maxEventBytes', async () => {
    // Version 01 may carry fields after the fourth; without a cap, 100 KB rode on each event
    // after the size check and into each job's origin.
    const huge = `01-${TRACEPARENT.slice(3)}-${'x'.repeat(100_000)}`;
    const append = t.app.events.append({ stream: 'big', type: 'Big', data: {} }, { traceparent: huge });
    await assert.rejects(append, (error: Error) => {
      assert.match(
        error.message,
        /^traceparent "01-0af7[^"]*"… is invalid: 100056 characters, at most 512 characters/,
      );
      assert.ok(!error.message.includes('\n'));
      assert.ok(error.message.length < 1000, 'the message does not echo the value');
      return true;
    });
    await assert.rejects(t.app.defer('anything', {}, { traceparent: huge }), /at most 512 characters/);
    await assert.rejects(
      t.app.events.append({
        stream: 'big',
        type: 'Big',
        data: {},
        metadata: { $origin: { traceparent: huge } },
      }),
      /at most 512 characters/,
    );
    const { rows } = await t.pool.query(
      `SELECT (SELECT count(*) FROM ${q}.events)::int AS events, (SELECT count(*) FROM ${q}.jobs)::int AS jobs`,
    );
    assert.deepEqual(rows[0], { events: 0, jobs: 0 });
    // A NUL, a lone surrogate or a non-ASCII letter in a later version's extra fields: a
    // ValidationError naming the traceparent, not PostgreSQL's jsonb refusing the \u escape.
    for (const bad of ['\u0000', '\ud800', '\u00e9', '\u007f']) {
      const traceparent = `01-${TRACEPARENT.slice(3)}-a${bad}`;
      await assert.rejects(
        t.app.events.append({ stream: 'big', type: 'Big', data: {} }, { traceparent }),
        /^ValidationError: traceparent "01-0af7.*" is invalid: expected a W3C traceparent/,
        JSON.stringify(bad),
      );
      await assert.rejects(t.app.defer('anything', {}, { traceparent }), /^ValidationError: traceparent/);
    }
    const { rows: after } = await t.pool.query(
      `SELECT (SELECT count(*) FROM ${q}.events)::int AS events, (SELECT count(*) FROM ${q}.jobs)::int AS jobs`,
    );
    assert.deepEqual(after[0], { events: 0, jobs: 0 });
    // A later version's extra fields within the cap are kept, as the spec asks.
    const later = `01-${TRACEPARENT.slice(3)}-abc`;
    const stored = await t.app.events.append({ stream: 'ok', type: 'Ok', data: {} }, { traceparent: later });
    assert.deepEqual(stored.metadata, { $origin: { traceparent: later } });
  });

  it("a stored tracestate past the cap (written from SQL) is not passed on to a job's events and follow-ups", async () => {
    const keep = { keepSucceededFor: { hours: 1 } };
    const followUp = t.app.task('follow_up', keep, async () => {});
    t.app.task('big_state', { ...keep, transaction: true }, async (_args, ctx) => {
      await t.app.events.append(
        { stream: `from-${ctx.job.id}`, type: 'FromJob', data: {} },
        { client: ctx.tx },
      );
      await ctx.defer(followUp, {});
    });
    await t.pool.query(
      `SELECT * FROM ${q}.defer_job_with_origin(jsonb_build_object('traceparent', $1::text, 'tracestate', repeat('a', 100000)), 'big_state')`,
      [TRACEPARENT],
    );
    const controller = new AbortController();
    const running = t.app.run({ concurrency: 1, signal: controller.signal, pollInterval: 100 });
    try {
      await waitFor('the job and its follow-up to succeed', async () => {
        const { rows } = await t.pool.query(
          `SELECT count(*)::int AS n FROM ${q}.jobs WHERE task IN ('big_state', 'follow_up') AND status = 'succeeded'`,
        );
        return rows[0].n === 2;
      });
    } finally {
      controller.abort();
      await running;
    }
    const { rows } = await t.pool.query(
      `SELECT length(metadata::text) AS bytes, metadata -> '$origin' AS origin FROM ${q}.events WHERE type = 'FromJob'`,
    );
    assert.equal(rows.length, 1);
    assert.ok(rows[0].bytes < 4096, `${rows[0].bytes} bytes of metadata past maxEventBytes 4096`);
    assert.equal(rows[0].origin.traceparent, TRACEPARENT);
    const { rows: follow } = await t.pool.query(`SELECT origin FROM ${q}.jobs WHERE task = 'follow_up'`);
    assert.equal(follow[0].origin.tracestate, undefined);
  });

  it("a page passes on its first traced event's trace, but not a tracestate past the cap (appended from SQL)", async () => {
    const paged = t.app.task('paged', { keepSucceededFor: { hours: 1 } }, async () => {});
    t.app.processor(
      'big_state_page',
      { types: ['BigState'], trigger: { onAppend: { debounce: { milliseconds: 10 } } } },
      (events$, ctx) =>
        events$.pipe(
          toArray(),
          mergeMap(async () => {
            await paged.defer({}, { client: ctx.tx });
          }),
        ),
    );
    await t.pool.query(`SELECT * FROM ${q}.append_events($1::jsonb)`, [
      JSON.stringify([
        {
          stream: 'bs-1',
          type: 'BigState',
          data: {},
          metadata: { $origin: { traceparent: TRACEPARENT, tracestate: 'a'.repeat(100_000) } },
        },
      ]),
    ]);
    const controller = new AbortController();
    const running = t.app.run({ concurrency: 1, signal: controller.signal, pollInterval: 100 });
    try {
      await waitFor('the page to defer its job', async () => {
        const { rows } = await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.jobs WHERE task = 'paged'`);
        return rows[0].n === 1;
      });
    } finally {
      controller.abort();
      await running;
    }
    const { rows } = await t.pool.query(`SELECT origin FROM ${q}.jobs WHERE task = 'paged'`);
    assert.equal(rows[0].origin.processor, 'big_state_page');
    assert.equal(rows[0].origin.traceparent, TRACEPARENT);
    assert.equal(rows[0].origin.tracestate, undefined);
  });
});
