/**
 * Trace context and "caused by" without OpenTelemetry (tracing: 'off'): given as options,
 * checked, stored with events and jobs, and passed on by a real worker from an append
 * through a processor page to a job, and from that job's handler to its follow-ups.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { mergeMap, toArray } from 'rxjs';
import { type AdminServer, startAdminServer } from '../../src/admin/server.js';
import { ValidationError } from '../../src/errors.js';
import type { StoredEvent } from '../../src/events/storedEvent.js';
import { waitUntilReadable } from '../events/readable.js';
import { databaseUrl, isolatedApp, runCli, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const TRACEPARENT = `00-${TRACE_ID}-00f067aa0ba902b7-01`;

describe('trace context without OpenTelemetry', () => {
  let t: TestApp;
  let q: string;
  const count = async (table: string) =>
    Number((await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.${table}`)).rows[0].n);

  before(async () => {
    t = await isolatedApp('trace_origin', { tracing: 'off' });
    q = `"${t.schema}"`;
  });
  after(async () => {
    await t?.cleanup();
  });

  it('an append records the given traceparent and tracestate in metadata.$origin', async () => {
    const stored = await t.app.events.append(
      { stream: 'order-1', type: 'OrderPlaced', data: { total: 5 }, metadata: { user: 'ann' } },
      { traceparent: TRACEPARENT, tracestate: 'vendor=abc' },
    );
    assert.deepEqual(stored.metadata, {
      user: 'ann',
      $origin: { traceparent: TRACEPARENT, tracestate: 'vendor=abc' },
    });
    const { rows } = await t.pool.query(`SELECT metadata FROM ${q}.events WHERE position = $1`, [
      stored.position.toString(),
    ]);
    assert.deepEqual(rows[0].metadata.$origin, { traceparent: TRACEPARENT, tracestate: 'vendor=abc' });
    // Several events, one call: each records it; without a trace context nothing is added.
    const many = await t.app.events.append(
      [
        { stream: 'order-2', type: 'OrderPlaced', data: 1 },
        { stream: 'order-3', type: 'OrderPlaced', data: 2 },
      ],
      { traceparent: TRACEPARENT },
    );
    assert.deepEqual(
      many.map((e) => e.metadata),
      [{ $origin: { traceparent: TRACEPARENT } }, { $origin: { traceparent: TRACEPARENT } }],
    );
    const plain = await t.app.events.append({ stream: 'order-4', type: 'OrderPlaced', data: 3 });
    assert.deepEqual(plain.metadata, {});
  });

  it('an $origin the caller put in the metadata is kept as given', async () => {
    const own = { traceparent: `00-${'a'.repeat(32)}-${'b'.repeat(16)}-00`, job: 'elsewhere-7' };
    const stored = await t.app.events.append(
      { stream: 'copy-1', type: 'Copied', data: null, metadata: { $origin: own } },
      { traceparent: TRACEPARENT },
    );
    assert.deepEqual(stored.metadata, { $origin: own });
  });

  it('a malformed trace context is one line naming it, and nothing is written', async () => {
    const eventsBefore = await count('events');
    const jobsBefore = await count('jobs');
    const bad: [string, Record<string, unknown>, RegExp][] = [
      [
        'too short',
        { traceparent: '00-abc-01' },
        /^traceparent "00-abc-01" is invalid: expected a W3C traceparent/,
      ],
      [
        'upper case',
        { traceparent: TRACEPARENT.toUpperCase() },
        /^traceparent "00-4BF92F.*" is invalid: expected a W3C traceparent/,
      ],
      [
        'zero trace id',
        { traceparent: `00-${'0'.repeat(32)}-00f067aa0ba902b7-01` },
        /has an all-zero trace id/,
      ],
      ['zero parent id', { traceparent: `00-${TRACE_ID}-${'0'.repeat(16)}-01` }, /has an all-zero parent id/],
      ['version ff', { traceparent: `ff-${TRACE_ID}-00f067aa0ba902b7-01` }, /has version ff/],
      ['version 00 with more', { traceparent: `${TRACEPARENT}-extra` }, /version 00 has four fields/],
      ['a number', { traceparent: 42 }, /^traceparent is number 42: expected a string/],
      ['tracestate alone', { tracestate: 'a=b' }, /^traceparent is missing: expected a string/],
      [
        'tracestate not ASCII',
        { traceparent: TRACEPARENT, tracestate: 'a=\u00e9' },
        /^tracestate is invalid/,
      ],
      [
        'tracestate too long',
        { traceparent: TRACEPARENT, tracestate: 'a'.repeat(513) },
        /at most 512 characters/,
      ],
    ];
    for (const [label, options, message] of bad) {
      const append = t.app.events.append({ stream: 'bad', type: 'Bad', data: 1 }, options);
      await assert.rejects(append, (error: Error) => {
        assert.ok(error instanceof ValidationError, label);
        assert.match(error.message, message, label);
        assert.ok(!error.message.includes('\n'), `${label}: one line`);
        return true;
      });
      await assert.rejects(t.app.defer('anything', {}, options), ValidationError, label);
    }
    await assert.rejects(
      t.app.events.append({ stream: 'bad', type: 'Bad', data: 1, metadata: { $origin: 'x' } }),
      /^ValidationError: event\.metadata\.\$origin is reserved for what caused the event/,
    );
    await assert.rejects(
      t.app.events.append({
        stream: 'bad',
        type: 'Bad',
        data: 1,
        metadata: { $origin: { traceparent: 'x' } },
      }),
      /event\.metadata\.\$origin\.traceparent "x" is invalid/,
    );
    const task = t.app.task('never-run', {}, async () => {});
    await assert.rejects(
      task.defer({}, { traceparent: 'nope' }),
      /^ValidationError: traceparent "nope" is invalid/,
    );
    await assert.rejects(
      task.deferMany([{ args: 1 }, { args: 2 }], { traceparent: 'nope' }),
      /^ValidationError: traceparent "nope" is invalid/,
    );
    assert.equal(await count('events'), eventsBefore);
    assert.equal(await count('jobs'), jobsBefore);
  });

  it('the SQL functions take an origin the same way, check it, and leave no setting behind', async () => {
    const origin = { traceparent: TRACEPARENT, job: '1' };
    const client = await t.pool.connect();
    try {
      await client.query('BEGIN');
      const traced = await client.query(`SELECT id::text FROM ${q}.defer_job_with_origin($1, 'sql-task')`, [
        origin,
      ]);
      const many = await client.query(
        `SELECT id::text FROM ${q}.defer_jobs_with_origin($1, ARRAY['sql-task', 'sql-task'], ARRAY['{}', '{}']::jsonb[],
           ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::timestamptz[], ARRAY[NULL, NULL]::int[], ARRAY[NULL, NULL]::text[],
           ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::int[], ARRAY[NULL, NULL]::text[])`,
        [origin],
      );
      // Later inserts of the same transaction do not inherit it.
      const plain = await client.query(`SELECT id::text FROM ${q}.defer_job('sql-task')`);
      const { rows } = await client.query(
        `SELECT id::text, origin FROM ${q}.jobs WHERE id = ANY ($1::bigint[]) ORDER BY id`,
        [[traced.rows[0].id, ...many.rows.map((r) => r.id), plain.rows[0].id]],
      );
      assert.deepEqual(
        rows.map((r) => r.origin),
        [origin, origin, origin, null],
      );
      await client.query('ROLLBACK');
      // Refused inside a savepoint (AlreadyEnqueued): the setting goes with the rollback to it.
      await client.query('BEGIN');
      await client.query(`SELECT * FROM ${q}.defer_job_with_origin($1, 'sql-task', queueing_lock => 'one')`, [
        origin,
      ]);
      await client.query('SAVEPOINT again');
      await assert.rejects(
        client.query(`SELECT * FROM ${q}.defer_job_with_origin($1, 'sql-task', queueing_lock => 'one')`, [
          origin,
        ]),
        { code: '23505' },
      );
      await client.query('ROLLBACK TO SAVEPOINT again');
      const later = await client.query(`SELECT id FROM ${q}.defer_job('sql-task')`);
      const after = await client.query(`SELECT origin FROM ${q}.jobs WHERE id = $1`, [later.rows[0].id]);
      assert.equal(after.rows[0].origin, null);
      await client.query('ROLLBACK');
      for (const [bad, message] of [
        ['"text"', /job origin "text" is invalid: expected a JSON object/],
        ['{"traceparent": "00-abc"}', /job origin traceparent 00-abc is invalid/],
        [
          `{"traceparent": "00-${'0'.repeat(32)}-00f067aa0ba902b7-01"}`,
          /job origin traceparent .* is invalid/,
        ],
      ] as const) {
        await assert.rejects(
          client.query(`SELECT * FROM ${q}.defer_job_with_origin($1, 'sql-task')`, [bad]),
          (
            error: Error & {
              code?: string;
            },
          ) => {
            assert.equal(error.code, '22023');
            assert.match(error.message, message);
            return true;
          },
        );
      }
    } finally {
      client.release();
    }
  });

  it("a re-drive's job continues the trace of the event it carries", async () => {
    const event = await t.app.events.append(
      { stream: 'redrive-1', type: 'Redriven', data: 1 },
      { traceparent: TRACEPARENT, tracestate: 'vendor=abc' },
    );
    const at = event.position.toString();
    // Another test file's open transaction may hold reads back for a moment (gap safety).
    await waitUntilReadable(t.pool, t.schema);
    const result = await t.app.events.redrive({ from: at, to: at, task: 'redriven', types: ['Redriven'] });
    assert.equal(result.deferred, 1);
    const { rows } = await t.pool.query(`SELECT origin FROM ${q}.jobs WHERE task = 'redriven'`);
    assert.deepEqual(
      rows.map((r) => r.origin),
      [{ traceparent: TRACEPARENT, tracestate: 'vendor=abc' }],
    );
    await t.pool.query(`DELETE FROM ${q}.jobs WHERE task = 'redriven'`);
  });

  it('a traced defer meets a queueing lock as any defer does', async () => {
    const first = await t.app.defer(
      'locked',
      {},
      { queueingLock: 'l1', traceparent: TRACEPARENT, delay: { hours: 1 } },
    );
    assert.ok(first.enqueued);
    await assert.rejects(
      t.app.defer('locked', {}, { queueingLock: 'l1', traceparent: TRACEPARENT }),
      (error: Error) => error.name === 'AlreadyEnqueued',
    );
    const ignored = await t.app.defer(
      'locked',
      {},
      { queueingLock: 'l1', traceparent: TRACEPARENT, onConflict: 'ignore' },
    );
    assert.deepEqual(ignored, { enqueued: false, existingId: first.id });
    await t.pool.query(`DELETE FROM ${q}.jobs WHERE task = 'locked'`);
  });

  it('a job deferred with a traceparent, or with none, stores exactly that', async () => {
    const traced = await t.app.defer(
      'stored-only',
      { n: 1 },
      { traceparent: TRACEPARENT, delay: { hours: 1 } },
    );
    const plain = await t.app.defer('stored-only', { n: 2 }, { delay: { hours: 1 } });
    assert.ok(traced.enqueued && plain.enqueued);
    const shown = await t.app.jobs.show(traced.id);
    assert.deepEqual(shown?.origin, { traceparent: TRACEPARENT });
    assert.equal(shown?.caused_by, `trace ${TRACE_ID}`);
    const none = await t.app.jobs.show(plain.id);
    assert.equal(none?.origin, null);
    assert.equal(none?.caused_by, null);
    await t.pool.query(`DELETE FROM ${q}.jobs WHERE task = 'stored-only'`);
  });

  describe('through a real worker: append → processor page → job → handler → follow-ups', () => {
    let server: AdminServer;
    let appended: StoredEvent;
    let handleId: string;
    let leafId: string;

    before(async () => {
      const keep = { keepSucceededFor: { hours: 1 } };
      const leaf = t.app.task('leaf', keep, async () => {});
      const handle = t.app.task(
        'handle',
        { ...keep, transaction: true },
        async (args: { position: string }, ctx) => {
          await ctx.defer(leaf, { from: args.position });
          await t.app.events.append({ stream: 'handled', type: 'Handled', data: args }, { client: ctx.tx });
        },
      );
      t.app.processor(
        'fanout',
        { types: ['Placed'], trigger: { onAppend: { debounce: { milliseconds: 10 } } } },
        (events$, ctx) =>
          events$.pipe(
            toArray(),
            mergeMap(async (page) => {
              for (const event of page) {
                await handle.defer({ position: event.position.toString() }, { client: ctx.tx });
                await t.app.events.append(
                  { stream: 'derived', type: 'Derived', data: { from: event.position.toString() } },
                  { client: ctx.tx },
                );
              }
            }),
          ),
      );
      appended = await t.app.events.append(
        { stream: 'cart-1', type: 'Placed', data: {} },
        { traceparent: TRACEPARENT, tracestate: 'vendor=abc' },
      );
      const controller = new AbortController();
      const running = t.app.run({ concurrency: 2, signal: controller.signal, pollInterval: 100 });
      try {
        await waitFor('leaf to succeed', async () => {
          const { rows } = await t.pool.query(
            `SELECT count(*)::int AS n FROM ${q}.jobs WHERE task = 'leaf' AND status = 'succeeded'`,
          );
          return rows[0].n === 1;
        });
      } finally {
        controller.abort();
        await running;
      }
      const ids = await t.pool.query(`SELECT task, id::text FROM ${q}.jobs WHERE task IN ('handle', 'leaf')`);
      handleId = ids.rows.find((r) => r.task === 'handle').id;
      leafId = ids.rows.find((r) => r.task === 'leaf').id;
      server = await startAdminServer({ app: t.app, port: 0 });
    });
    after(async () => {
      await server?.close();
    });

    it('the job a page deferred names the processor and the event, and continues its trace', async () => {
      const position = appended.position.toString();
      const page = {
        processor: 'fanout',
        events: [position, position],
        traceparent: TRACEPARENT,
        tracestate: 'vendor=abc',
      };
      const { rows } = await t.pool.query(
        `SELECT count(*)::int AS n, min(origin::text) AS origin FROM ${q}.jobs WHERE task = 'handle'`,
      );
      assert.equal(rows[0].n, 1);
      assert.deepEqual(JSON.parse(rows[0].origin), page);
      const derived = await t.pool.query(`SELECT metadata FROM ${q}.events WHERE type = 'Derived'`);
      assert.deepEqual(
        derived.rows.map((r) => r.metadata),
        [{ $origin: page }],
      );
    });

    it("the handler's follow-ups name its job and pass the trace on as it came", async () => {
      const followUp = { job: handleId, traceparent: TRACEPARENT, tracestate: 'vendor=abc' };
      const leaf = await t.app.jobs.show(leafId);
      assert.deepEqual(leaf?.origin, followUp);
      assert.equal(leaf?.caused_by, `job ${handleId}, trace ${TRACE_ID}`);
      const handled = await t.pool.query(`SELECT metadata FROM ${q}.events WHERE type = 'Handled'`);
      assert.deepEqual(
        handled.rows.map((r) => r.metadata),
        [{ $origin: followUp }],
      );
      // The processor's own run jobs were deferred by triggers: no cause, no trace.
      const runs = await t.pool.query(
        `SELECT count(*)::int AS n FROM ${q}.jobs WHERE task LIKE 'processor:%' AND origin IS NOT NULL`,
      );
      assert.equal(runs.rows[0].n, 0);
    });

    it('jobs show prints "caused by"; the JSON API and the dashboard list carry it', async () => {
      const env = { DATABASE_URL: databaseUrl() };
      const shown = await runCli(['jobs', 'show', handleId, '--schema', t.schema], env);
      assert.equal(shown.code, 0, shown.stderr);
      const position = appended.position.toString();
      assert.match(
        shown.stdout,
        new RegExp(`^caused by event ${position} \\(processor fanout\\), trace ${TRACE_ID}$`, 'm'),
      );
      const json = await runCli(['jobs', 'show', leafId, '--schema', t.schema, '--json'], env);
      assert.equal(JSON.parse(json.stdout).caused_by, `job ${handleId}, trace ${TRACE_ID}`);

      const one = (await (await fetch(`${server.url}/api/jobs/${leafId}`)).json()) as {
        job: { caused_by: string };
      };
      assert.equal(one.job.caused_by, `job ${handleId}, trace ${TRACE_ID}`);
      const list = (await (await fetch(`${server.url}/api/jobs?state=succeeded`)).json()) as {
        jobs: { id: string; caused_by: string | null; origin: unknown }[];
      };
      const byId = new Map(list.jobs.map((job) => [job.id, job]));
      assert.equal(byId.get(leafId)?.caused_by, `job ${handleId}, trace ${TRACE_ID}`);
      assert.equal(byId.get(handleId)?.caused_by, `event ${position} (processor fanout), trace ${TRACE_ID}`);
    });

    it('append and defer on the CLI take --traceparent, and refuse a malformed one in one line', async () => {
      const env = { DATABASE_URL: databaseUrl() };
      const appendedByCli = await runCli(
        [
          'append',
          '--stream',
          'cli-1',
          '--type',
          'Noted',
          '--data',
          '{}',
          '--traceparent',
          TRACEPARENT,
          '--schema',
          t.schema,
          '--json',
        ],
        env,
      );
      assert.equal(appendedByCli.code, 0, appendedByCli.stderr);
      assert.deepEqual(JSON.parse(appendedByCli.stdout).metadata, { $origin: { traceparent: TRACEPARENT } });
      const deferred = await runCli(
        ['defer', 'cli-task', '--delay', '1h', '--traceparent', TRACEPARENT, '--schema', t.schema, '--json'],
        env,
      );
      assert.equal(deferred.code, 0, deferred.stderr);
      assert.deepEqual((await t.app.jobs.show(JSON.parse(deferred.stdout).id))?.origin, {
        traceparent: TRACEPARENT,
      });
      const eventsBefore = await count('events');
      const jobsBefore = await count('jobs');
      for (const args of [
        ['append', '--stream', 'cli-2', '--type', 'Noted', '--data', '{}', '--traceparent', 'garbage'],
        ['defer', 'cli-task', '--traceparent', 'garbage'],
      ]) {
        const refused = await runCli([...args, '--schema', t.schema], env);
        assert.equal(refused.code, 2);
        assert.match(
          refused.stderr.trim(),
          /^outbatch: --traceparent "garbage" is invalid: expected a W3C traceparent[^\n]*$/,
        );
      }
      assert.equal(await count('events'), eventsBefore);
      assert.equal(await count('jobs'), jobsBefore);
    });
  });
});
