import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { firstValueFrom, take, toArray } from 'rxjs';
import { ValidationError } from '../../src/errors.js';
import { formatCheckpoint, parseCheckpoint, START_CHECKPOINT } from '../../src/events/checkpoint.js';
import { eventsChannel } from '../../src/events/follow.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { waitUntilReadable } from './readable.js';

describe('events: read, stream, head, follow', () => {
  let t: TestApp;
  before(async () => {
    t = await isolatedApp('ev_read');
    await t.app.events.append(
      Array.from({ length: 25 }, (_, i) => ({
        stream: i % 2 === 0 ? `order-${i % 5}` : `user-${i % 3}`,
        type: i % 2 === 0 ? 'OrderPlaced' : 'UserSeen',
        data: { i },
      })),
    );
  });
  after(async () => t.cleanup());

  const readAll = async (options: { types?: string[]; streamPrefix?: string; limit?: number } = {}) => {
    await waitUntilReadable(t.pool, t.schema);
    const seen: number[] = [];
    let after = START_CHECKPOINT;
    for (;;) {
      const page = await t.app.events.read({ ...options, after, limit: options.limit ?? 4 });
      seen.push(...page.events.map((e) => (e.data as { i: number }).i));
      after = page.checkpoint;
      if (page.caughtUp) return { seen, after };
    }
  };

  it('pages through every event once, in order, with a checkpoint to continue from', async () => {
    const { seen, after } = await readAll();
    assert.deepEqual(
      seen,
      Array.from({ length: 25 }, (_, i) => i),
    );
    const again = await t.app.events.read({ after });
    assert.deepEqual(again.events, []);
    assert.equal(again.caughtUp, true);
  });

  it('filters by types and stream prefix', async () => {
    assert.deepEqual(
      (await readAll({ types: ['UserSeen'] })).seen,
      Array.from({ length: 12 }, (_, i) => 2 * i + 1),
    );
    assert.deepEqual((await readAll({ streamPrefix: 'order-1' })).seen, [6, 16]);
    assert.deepEqual((await readAll({ types: ['Nope'] })).seen, []);
  });

  it('a filtered reader that is caught up moves its checkpoint past what it skipped', async () => {
    const page = await t.app.events.read({ types: ['Nope'] });
    const head = await t.app.events.head();
    assert.ok(parseCheckpoint(page.checkpoint).txId >= parseCheckpoint(head.checkpoint).txId);
    const later = await t.app.events.append({ stream: 'order-x', type: 'Nope', data: { i: 99 } });
    await waitUntilReadable(t.pool, t.schema);
    const next = await t.app.events.read({ types: ['Nope'], after: page.checkpoint });
    assert.deepEqual(
      next.events.map((e) => e.position),
      [later.position],
    );
  });

  it('reads inside a caller transaction', async () => {
    const client = await t.pool.connect();
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      const page = await t.app.events.read({ client, limit: 3 });
      assert.equal(page.events.length, 3);
      await client.query('COMMIT');
    } finally {
      client.release();
    }
  });

  it('reads and appends through a client that is not node-postgres’ own (object rows)', async () => {
    // A wrapper around another driver, or an instrumented client: only query(text, values).
    const wrapped = { query: (text: string, values?: unknown[]) => t.pool.query(text, values) };
    const direct = await t.app.events.read({ limit: 3 });
    const viaWrapper = await t.app.events.read({ client: wrapped, limit: 3 });
    assert.deepEqual(viaWrapper, direct);
    const stored = await t.app.events.append(
      [
        { stream: 'wrapped-1', type: 'T', data: { n: 1 } },
        { stream: 'wrapped-1', type: 'T', data: { n: 2 } },
      ],
      { client: wrapped },
    );
    assert.deepEqual(
      stored.map((e) => [e.streamVersion, e.data, typeof e.position]),
      [
        [1, { n: 1 }, 'bigint'],
        [2, { n: 2 }, 'bigint'],
      ],
    );
    assert.deepEqual(
      await t.app.events.stream('wrapped-1', { client: wrapped }),
      await t.app.events.stream('wrapped-1'),
    );
  });

  it('stream(), head() and get()', async () => {
    const stream = await t.app.events.stream('order-0');
    assert.deepEqual(
      stream.map((e) => e.streamVersion),
      [1, 2, 3],
    );
    assert.deepEqual(
      (await t.app.events.stream('order-0', { fromVersion: 2 })).map((e) => (e.data as { i: number }).i),
      [10, 20],
    );
    await waitUntilReadable(t.pool, t.schema);
    const head = await t.app.events.head();
    const last = await t.app.events.last({ limit: 1 });
    assert.equal(head.checkpoint, last[0]!.checkpoint);
    const got = await t.app.events.get(stream[0]!.position);
    assert.deepEqual(got, stream[0]);
    assert.equal(await t.app.events.get(999999), undefined);
  });

  it('checkpoints are strings that round-trip, and garbage is a ValidationError', async () => {
    assert.deepEqual(parseCheckpoint('7311:42'), { txId: 7311n, position: 42n });
    assert.equal(formatCheckpoint(parseCheckpoint('7311:42')), '7311:42');
    for (const bad of [
      '',
      'abc',
      '1:',
      ':1',
      '-1:2',
      '1:2:3',
      ' 1:2',
      '1.5:2',
      '99999999999999999999999:1',
      12,
    ]) {
      assert.throws(() => parseCheckpoint(bad), /checkpoint .* is invalid: expected "<tx_id>:<position>"/);
    }
    await assert.rejects(t.app.events.read({ after: 'garbage' }), ValidationError);
    await assert.rejects(
      t.app.events.read({ limit: 0 }),
      /limit is 0: expected a whole number from 1 to 100000/,
    );
    await assert.rejects(t.app.events.read({ types: [''] }), /types is \[""\]/);
    await assert.rejects(t.app.events.get('x'), /position "x" is invalid/);
    await assert.rejects(t.app.events.stream('s', { fromVersion: 0 }), /fromVersion is 0/);
  });

  it('notifies once per appending transaction, on commit only', async () => {
    const listener = new pg.Client({ connectionString: databaseUrl() });
    await listener.connect();
    const received: string[] = [];
    listener.on('notification', (n) => received.push(n.channel));
    await listener.query(`LISTEN "${eventsChannel(t.schema)}"`);
    const client = await t.pool.connect();
    try {
      await client.query('BEGIN');
      for (let i = 0; i < 5; i++) {
        await t.app.events.append([{ stream: 'n', type: 'T', data: i }], { client });
      }
      await client.query('ROLLBACK');
      await client.query('BEGIN');
      for (let i = 0; i < 5; i++) {
        await t.app.events.append([{ stream: 'n', type: 'T', data: i }], { client });
      }
      await client.query('COMMIT');
      // A round trip on the listening connection delivers anything already sent to it.
      await listener.query('SELECT 1');
      await t.app.events.append({ stream: 'n', type: 'T', data: 'x' });
      await listener.query('SELECT 1');
      assert.deepEqual(received, [eventsChannel(t.schema), eventsChannel(t.schema)]);
    } finally {
      client.release();
      await listener.end();
    }
  });

  it('follow() emits the backlog, then new events as they are appended', async () => {
    await waitUntilReadable(t.pool, t.schema);
    const tail = await t.app.events.last({ limit: 3 });
    const from = tail[0]!.checkpoint;
    // NOTIFY wakes the follower; the poll covers events held back by other test files'
    // transactions (which end without a NOTIFY).
    const followed = firstValueFrom(
      t.app.events.follow(from, { pollIntervalMs: 250 }).pipe(take(2 + 5), toArray()),
    );
    // Wait until the follower has drained its backlog and listens, then append.
    await waitFor(async () => (await listeners(t)) > 0);
    for (let i = 0; i < 5; i++) await t.app.events.append({ stream: 'followed', type: 'T', data: { i } });
    const events = await followed;
    assert.deepEqual(
      events.map((e) => e.position),
      [...tail.slice(1).map((e) => e.position), ...events.slice(2).map((e) => e.position)],
    );
    assert.deepEqual(
      events.slice(2).map((e) => (e.data as { i: number }).i),
      [0, 1, 2, 3, 4],
    );
    await waitFor(async () => (await listeners(t)) === 0);
  });

  it('follow() rejects a bad checkpoint at once', () => {
    assert.throws(() => t.app.events.follow('nope'), ValidationError);
  });
});

async function listeners(t: TestApp): Promise<number> {
  const { rows } = await t.pool.query(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'outbatch-listen' AND query LIKE $1`,
    [`LISTEN "${eventsChannel(t.schema)}"`],
  );
  return rows[0].n;
}

async function waitFor(condition: () => Promise<boolean>): Promise<void> {
  for (;;) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
