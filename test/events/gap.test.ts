/**
 * The gap test: appenders commit out of position order (some hold their transaction
 * open, some roll back) while readers follow the log. Gap-safe reading must deliver
 * every committed event exactly once and nothing else; a naive "position > last"
 * reader running beside it shows the hazard is real.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { parseCheckpoint, START_CHECKPOINT } from '../../src/events/checkpoint.js';
import type { StoredEvent } from '../../src/events/storedEvent.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';

const APPENDERS = 10;
const TRANSACTIONS_EACH = 25;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const tag = (e: StoredEvent) => (e.data as { tag: string }).tag;

describe('gap-safe reads under concurrent appenders', () => {
  let t: TestApp;
  before(async () => {
    t = await isolatedApp('ev_gap', { pool: { max: 4 } });
  });
  after(async () => t.cleanup());

  it('delivers every committed event exactly once, no rolled back event, in a stable order', async () => {
    const committed = new Set<string>();
    const rolledBack = new Set<string>();
    let appending = true;

    const appender = async (a: number) => {
      const client = new pg.Client({ connectionString: databaseUrl() });
      await client.connect();
      try {
        for (let n = 0; n < TRANSACTIONS_EACH; n++) {
          const tags = Array.from({ length: 1 + (n % 3) }, (_, i) => `${a}-${n}-${i}`);
          await client.query('BEGIN');
          await t.app.events.append(
            tags.map((tagValue) => ({ stream: `gap-${a % 3}`, type: 'Gap', data: { tag: tagValue } })),
            { client },
          );
          // Some transactions stay open while others, with later positions, commit.
          const roll = Math.random();
          if (roll < 0.3) await sleep(20 + Math.random() * 80);
          else if (roll < 0.6) await sleep(Math.random() * 5);
          if (Math.random() < 0.2) {
            await client.query('ROLLBACK');
            for (const x of tags) rolledBack.add(x);
          } else {
            await client.query('COMMIT');
            for (const x of tags) committed.add(x);
          }
        }
      } finally {
        await client.end();
      }
    };

    // Once the appenders are done, a reader is finished when its checkpoint has passed the
    // highest stored tx_id (an open transaction in another test file may hold it back a while).
    let lastTxId: bigint | undefined;
    const finished = (checkpoint: string) =>
      lastTxId !== undefined && parseCheckpoint(checkpoint).txId >= lastTxId;

    const gapSafe: StoredEvent[] = [];
    const reader = async () => {
      let after = START_CHECKPOINT;
      for (;;) {
        const page = await t.app.events.read({ after, limit: 7 });
        gapSafe.push(...page.events);
        after = page.checkpoint;
        if (page.caughtUp && finished(after)) return;
        if (page.caughtUp) await sleep(2);
      }
    };

    // What a reader that remembers only the last position would see.
    const naive: string[] = [];
    const naiveReader = async () => {
      let last = '0';
      for (;;) {
        const done = !appending;
        const { rows } = await t.pool.query(
          `SELECT position::text AS position, data->>'tag' AS tag FROM "${t.schema}".events WHERE position > $1 ORDER BY position LIMIT 7`,
          [last],
        );
        for (const row of rows) naive.push(row.tag);
        if (rows.length > 0) last = rows.at(-1).position;
        if (done && rows.length < 7) return;
        if (rows.length < 7) await sleep(2);
      }
    };

    const readers = Promise.all([reader(), naiveReader()]);
    await Promise.all(Array.from({ length: APPENDERS }, (_, a) => appender(a)));
    appending = false;
    lastTxId = BigInt(
      (await t.pool.query(`SELECT max(tx_id::text::numeric)::text AS tx FROM "${t.schema}".events`)).rows[0]
        .tx,
    );
    await readers;

    const delivered = gapSafe.map(tag);
    assert.ok(committed.size > 0 && rolledBack.size > 0, 'both outcomes happened');
    assert.equal(new Set(delivered).size, delivered.length, 'nothing delivered twice');
    assert.equal(delivered.filter((x) => rolledBack.has(x)).length, 0, 'no rolled back event');
    assert.deepEqual(new Set(delivered), committed, 'every committed event delivered');
    assert.equal(delivered.length, committed.size);

    // Delivered in (tx_id, position) order.
    for (let i = 1; i < gapSafe.length; i++) {
      const [p, q] = [gapSafe[i - 1]!, gapSafe[i]!];
      assert.ok(p.txId < q.txId || (p.txId === q.txId && p.position < q.position), `order at ${i}`);
    }

    // Rereading from the start, with other page sizes, gives the same sequence.
    for (const limit of [1, 13, 1000]) {
      const again: string[] = [];
      let after = START_CHECKPOINT;
      for (;;) {
        const page = await t.app.events.read({ after, limit });
        again.push(...page.events.map(tag));
        after = page.checkpoint;
        if (page.caughtUp && finished(after)) break;
      }
      assert.deepEqual(again, delivered, `rerun with pages of ${limit}`);
    }

    // The hazard is real: the naive reader skipped events that committed late.
    const missed = [...committed].filter((x) => !naive.includes(x)).length;
    assert.ok(missed > 0, 'the naive position reader missed late commits');
  });
});
