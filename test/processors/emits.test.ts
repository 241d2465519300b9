/**
 * A processor that appends events through ctx.tx (in its page's transaction) and consumes
 * them too: its own appends get a transaction id at or above the page's read horizon, so
 * the checkpoint never passes them, and each is processed once, after the page commits.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { concatMap, from, toArray } from 'rxjs';
import type { StoredEvent } from '../../src/index.js';
import { isolatedApp, type TestApp } from '../helpers.js';
import { processorState, waitFor } from '../jobs/support.js';

let t: TestApp;
let q: string;
const controller = new AbortController();
let running: Promise<void>;

before(async () => {
  t = await isolatedApp('proc_emits');
  q = `"${t.schema}"`;
  await t.pool.query(`CREATE TABLE ${q}.seen (position bigint PRIMARY KEY, type text NOT NULL)`);
  t.app.processor(
    'summarizer',
    {
      types: ['OrderPlaced', 'OrderSummarized'],
      trigger: { onAppend: { debounce: { milliseconds: 10 } } },
      batchSize: 7,
    },
    (events$, ctx) =>
      events$.pipe(
        toArray(),
        concatMap((events: StoredEvent[]) =>
          from(
            (async () => {
              await ctx.tx.query(`INSERT INTO ${q}.seen SELECT * FROM unnest($1::bigint[], $2::text[])`, [
                events.map((e) => e.position.toString()),
                events.map((e) => e.type),
              ]);
              const placed = events.filter((e) => e.type === 'OrderPlaced');
              if (placed.length === 0) return;
              await t.app.events.append(
                placed.map((e) => ({
                  stream: `summary-${e.stream}`,
                  type: 'OrderSummarized',
                  data: { of: e.position.toString() },
                })),
                { client: ctx.tx },
              );
            })(),
          ),
        ),
      ),
  );
  running = t.app.run({ concurrency: 2, signal: controller.signal, pollInterval: 50 });
});

after(async () => {
  controller.abort();
  await running;
  await t.cleanup();
});

describe('a processor consuming the events it appends through ctx.tx', () => {
  it('processes each of its own appends once, after its page commits', async () => {
    for (let round = 0; round < 5; round += 1) {
      await t.app.events.append(
        Array.from({ length: 20 }, (_, i) => ({
          stream: `order-${round}-${i}`,
          type: 'OrderPlaced',
          data: { i },
        })),
      );
    }
    await waitFor(
      'every order and every summary to be seen',
      async () => {
        const { rows } = await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.seen`);
        return rows[0].n === 200;
      },
      30_000,
      () => processorState(t.pool, t.schema, 'summarizer'),
    );
    const { rows } = await t.pool.query(
      `SELECT type, count(*)::int AS n FROM ${q}.seen GROUP BY type ORDER BY type`,
    );
    assert.deepEqual(rows, [
      { type: 'OrderPlaced', n: 100 },
      { type: 'OrderSummarized', n: 100 },
    ]);
    // Every stored event was seen (the primary key refuses a second sighting).
    const stored = await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.events`);
    assert.equal(stored.rows[0].n, 200);
  });
});
