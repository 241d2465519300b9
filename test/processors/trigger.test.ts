/**
 * onAppend triggers: one that cannot defer its runs (the database refused) is retried, so
 * the append that woke it is processed without waiting for the 30 s safety poll.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { bulkWrite, type StoredEvent } from '../../src/index.js';
import { captureLog, isolatedApp, type TestApp } from '../helpers.js';
import { processorState, waitFor } from '../jobs/support.js';

let t: TestApp;
let q: string;
const { log, lines } = captureLog('warn');
const controller = new AbortController();
let running: Promise<void>;

before(async () => {
  t = await isolatedApp('trigger', { logger: log });
  q = `"${t.schema}"`;
  await t.pool.query(`CREATE TABLE ${q}.seen (position bigint)`);
  t.app.processor('counter', { trigger: { onAppend: { debounce: { milliseconds: 10 } } } }, (events$, ctx) =>
    events$.pipe(
      bulkWrite(ctx.tx, `INSERT INTO ${q}.seen SELECT unnest($1::bigint[])`, (events: StoredEvent[]) => [
        events.map((event) => event.position.toString()),
      ]),
    ),
  );
  running = t.app.run({ concurrency: 2, signal: controller.signal, pollInterval: 50 });
  // The worker registers itself once the processors are recorded and their first runs
  // deferred; with no job left, that first run is over.
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

describe('onAppend trigger', () => {
  it('retries a trigger the database refused, and the append it was woken for is processed', async () => {
    // The trigger reads the processors table to find the versions to run: take it away.
    await t.pool.query(`ALTER TABLE ${q}.processors RENAME TO processors_away`);
    let stored: StoredEvent[];
    try {
      stored = await t.app.events.append(
        [1, 2, 3].map((n) => ({ stream: `s-${n}`, type: 'T', data: { n } })),
      );
      await waitFor('a failed trigger', async () =>
        lines.some((line) => line.includes('could not trigger processors; trying again')),
      );
    } finally {
      await t.pool.query(`ALTER TABLE ${q}.processors_away RENAME TO processors`);
    }
    // Within the 20 s of waitFor, well before the safety poll: the retry deferred the run.
    await waitFor(
      'the appended events to be processed',
      async () => (await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.seen`)).rows[0].n === 3,
      undefined,
      () => processorState(t.pool, t.schema, 'counter'),
    );
    const { rows } = await t.pool.query(`SELECT position::text FROM ${q}.seen ORDER BY position`);
    assert.deepEqual(
      rows.map((row) => row.position),
      stored.map((event) => event.position.toString()),
    );
  });
});
