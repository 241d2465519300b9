/**
 * A processor whose newer events are held back by an open transaction (older than the
 * events, it keeps the snapshot's xmin below them) looks again with a growing delay rather
 * than every 250 ms, says so once, and processes every event once the transaction ends.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { bulkWrite, type StoredEvent } from '../../src/index.js';
import { captureLog, isolatedApp, type TestApp } from '../helpers.js';
import { processorState, waitFor } from '../jobs/support.js';

let t: TestApp;
let q: string;
const { log, lines } = captureLog('info');
const controller = new AbortController();
let running: Promise<void>;

const HELD_LOG = 'held back by an open transaction';

/** Runs of the processor that finished, as the workers counted them. */
async function runsFinished(): Promise<number> {
  const { rows } = await t.pool.query(
    `SELECT coalesce(sum(succeeded + retried + failed), 0)::int AS n FROM ${q}.task_stats WHERE task = 'processor:held'`,
  );
  return rows[0].n;
}

before(async () => {
  t = await isolatedApp('proc_held', { logger: log });
  q = `"${t.schema}"`;
  await t.pool.query(`CREATE TABLE ${q}.seen (position bigint NOT NULL)`);
  t.app.processor('held', { trigger: { onAppend: { debounce: { milliseconds: 10 } } } }, (events$, ctx) =>
    events$.pipe(
      bulkWrite(ctx.tx, `INSERT INTO ${q}.seen SELECT unnest($1::bigint[])`, (events: StoredEvent[]) => [
        events.map((event) => event.position.toString()),
      ]),
    ),
  );
  running = t.app.run({ concurrency: 2, signal: controller.signal, pollInterval: 50 });
  await waitFor('the first run to finish', async () => {
    const { rows } = await t.pool.query(
      `SELECT (SELECT count(*) FROM ${q}.workers)::int AS workers, (SELECT count(*) FROM ${q}.jobs)::int AS jobs`,
    );
    return rows[0].workers === 1 && rows[0].jobs === 0;
  });
});

after(async () => {
  controller.abort();
  await running;
  await t.cleanup();
});

describe('events held back by an open transaction', () => {
  it('backs off while held, logs it once, and processes every event once the transaction ends', async (ctx) => {
    const holder: pg.PoolClient = await t.pool.connect();
    let stored: StoredEvent[];
    let duringHold: number;
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT pg_current_xact_id()');
      const before = await runsFinished();
      stored = await t.app.events.append(
        [1, 2, 3, 4, 5].map((n) => ({ stream: `s-${n}`, type: 'T', data: { n } })),
      );
      // Four seconds held: every 250 ms would be ~16 runs; doubling from 250 ms is 5.
      await new Promise((resolve) => setTimeout(resolve, 4_000));
      duringHold = (await runsFinished()) - before;
      const seen = await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.seen`);
      assert.equal(seen.rows[0].n, 0, 'nothing can be read past the open transaction');
    } finally {
      await holder.query('COMMIT').catch(() => {});
      holder.release();
    }
    ctx.diagnostic(`${duringHold} runs during a 4 s hold`);
    assert.ok(duringHold >= 1, `the append woke the processor (${duringHold} runs)`);
    assert.ok(
      duringHold <= 8,
      `${duringHold} runs while held: expected a backoff, not a re-run every 250 ms`,
    );
    assert.equal(lines.filter((line) => line.includes(HELD_LOG)).length, 1, 'logged once per hold');

    await waitFor(
      'the held events to be processed',
      async () => (await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.seen`)).rows[0].n >= stored.length,
      undefined,
      () => processorState(t.pool, t.schema, 'held'),
    );
    const { rows } = await t.pool.query(`SELECT position::text FROM ${q}.seen ORDER BY position`);
    assert.deepEqual(
      rows.map((row) => row.position),
      stored.map((event) => event.position.toString()),
      'each held event processed exactly once',
    );
  });
});
