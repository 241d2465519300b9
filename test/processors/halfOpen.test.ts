/**
 * A processor's connection gone half-open (the peer silent, never closed) at one of
 * outbatch's own statements — the checkpoint save of a page, the trigger that defers runs
 * — must not stop the processor: the statement is abandoned at the pool's deadline for
 * outbatch's own statements, its backend terminated, and every committed event is still
 * processed exactly once (found by review: before, the processor stopped for good).
 */
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { bulkWrite, createApp, type StoredEvent } from '../../src/index.js';
import { startFaultProxy } from '../faultProxy.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('proc_half_open');
  await t.pool.query(`CREATE TABLE "${t.schema}".seen (processor text, position bigint)`);
});
after(async () => t.cleanup());

const FAST = {
  pollInterval: 100,
  stallTimeout: 6_000,
  heartbeatInterval: 500,
  recoverInterval: 500,
  shutdownTimeout: 1_000,
};

for (const [moment, marker] of [
  ['the checkpoint save', 'SET checkpoint_tx'],
  ['the trigger', 'processor:'],
  // A run held back by an open transaction defers its next look (args carry heldRuns).
  ['a held-back run deferring its next look', 'heldRuns'],
] as const) {
  it(`a connection gone half-open at ${moment}: every event is processed once`, {
    timeout: 90_000,
  }, async () => {
    const proxy = await startFaultProxy(databaseUrl());
    const name =
      moment === 'the trigger' ? 'ho-trigger' : moment === 'the checkpoint save' ? 'ho-save' : 'ho-held';
    const app = createApp({
      databaseUrl: proxy.url,
      schema: t.schema,
      pool: { ownStatementTimeoutMs: 1_500 },
    });
    app.processor(
      name,
      { streamPrefix: `${name}-`, trigger: { onAppend: { debounce: { milliseconds: 10 } } }, batchSize: 10 },
      (events$, ctx) =>
        events$.pipe(
          bulkWrite(
            ctx.tx,
            `INSERT INTO "${t.schema}".seen SELECT $1, unnest($2::bigint[])`,
            (events: StoredEvent[]) => [name, events.map((event) => event.position.toString())],
          ),
        ),
    );
    const controller = new AbortController();
    const running = app.run({ ...FAST, signal: controller.signal });
    try {
      const append = (n: number) => t.app.events.append([{ stream: `${name}-${n}`, type: 'T', data: { n } }]);
      await append(0);
      await waitFor('the first event', async () => (await seen(name)).total === 1);
      // The processor's own pool only (the app under test); appends go direct.
      const { fired } = proxy.addRule({
        match: (m) => m.connection.applicationName !== 'outbatch-control' && m.text.includes(marker),
        action: 'half-open',
      });
      // A transaction holding an xid holds back every event committed after it began.
      const holder = moment.startsWith('a held-back') ? await t.pool.connect() : undefined;
      await holder?.query('BEGIN');
      await holder?.query('SELECT pg_current_xact_id()');
      await append(1);
      if (holder) await sleep(1_000);
      await holder?.query('COMMIT');
      holder?.release();
      await fired;
      for (let n = 2; n < 6; n += 1) await append(n);
      await waitFor('every event', async () => (await seen(name)).total === 6, 45_000);
      assert.deepEqual(await seen(name), { total: 6, distinct: 6 });
    } finally {
      controller.abort();
      try {
        await running; // a worker that failed to start rejects here, and the test fails with why
      } finally {
        // Always: a proxy left listening keeps the file's process, and the whole suite, alive.
        await app.close();
        await proxy.close();
      }
    }
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function seen(name: string) {
  const { rows } = await t.pool.query(
    `SELECT count(*)::int AS total, count(DISTINCT position)::int AS distinct FROM "${t.schema}".seen WHERE processor = $1`,
    [name],
  );
  return rows[0] as { total: number; distinct: number };
}
