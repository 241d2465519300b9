// @smoke
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ConcurrencyError, type ExpectedVersion } from '../../src/errors.js';
import { isolatedApp, type TestApp } from '../helpers.js';

describe('events.append', () => {
  let t: TestApp;
  before(async () => {
    t = await isolatedApp('ev_append');
  });
  after(async () => t.cleanup());

  const count = async (where = 'true', values: unknown[] = []) =>
    Number(
      (await t.pool.query(`SELECT count(*) FROM "${t.schema}".events WHERE ${where}`, values)).rows[0].count,
    );

  it('stores one event and returns position, stream version and recorded time', async () => {
    const stored = await t.app.events.append({ stream: 'order-1', type: 'OrderPlaced', data: { total: 10 } });
    assert.equal(stored.stream, 'order-1');
    assert.equal(stored.streamVersion, 1);
    assert.equal(stored.type, 'OrderPlaced');
    assert.deepEqual(stored.data, { total: 10 });
    assert.deepEqual(stored.metadata, {});
    assert.equal(typeof stored.position, 'bigint');
    assert.ok(stored.recordedAt instanceof Date);
    assert.equal(stored.duplicate, false);
    assert.equal(stored.checkpoint, `${stored.txId}:${stored.position}`);
  });

  it('returns the recorded time the database stored, to the millisecond, on every path and on read', async () => {
    const one = await t.app.events.append({ stream: 'time-1', type: 'T', data: {} }); // one statement
    const few = await t.app.events.append([
      { stream: 'time-2', type: 'T', data: {} },
      { stream: 'time-2', type: 'T', data: {} },
    ]); // the SQL function
    const many = await t.app.events.append(
      Array.from({ length: 1500 }, (_, i) => ({ stream: `time-3-${i % 7}`, type: 'T', data: { i } })), // COPY
    );
    for (const event of [one, few[0]!, many[0]!, many.at(-1)!]) {
      const { rows } = await t.pool.query(
        `SELECT floor(extract(epoch FROM recorded_at) * 1000)::float8 AS ms FROM "${t.schema}".events WHERE position = $1`,
        [event.position.toString()],
      );
      assert.equal(event.recordedAt.getTime(), rows[0].ms, `event ${event.position}`);
      const read = await t.app.events.get(event.position);
      assert.equal(read?.recordedAt.getTime(), rows[0].ms);
    }
  });

  it('stores a batch in input order, in one transaction, with contiguous versions per stream', async () => {
    const stored = await t.app.events.append([
      { stream: 'batch-a', type: 'T', data: 1 },
      { stream: 'batch-b', type: 'T', data: 2, metadata: { by: 'test' } },
      { stream: 'batch-a', type: 'T', data: 3 },
    ]);
    assert.deepEqual(
      stored.map((e) => [e.stream, e.streamVersion, e.data]),
      [
        ['batch-a', 1, 1],
        ['batch-b', 1, 2],
        ['batch-a', 2, 3],
      ],
    );
    assert.ok(stored[0]!.position < stored[1]!.position && stored[1]!.position < stored[2]!.position);
    assert.equal(new Set(stored.map((e) => e.txId)).size, 1);
    assert.deepEqual(stored[1]!.metadata, { by: 'test' });
    assert.deepEqual(await t.app.events.append([]), []);
  });

  it("joins the caller's transaction: a rollback leaves no event, a commit keeps it", async () => {
    const client = await t.pool.connect();
    try {
      await client.query('BEGIN');
      await t.app.events.append({ stream: 'tx-rollback', type: 'T', data: {} }, { client });
      assert.equal(await count('stream = $1', ['tx-rollback']), 0, 'not visible before commit');
      await client.query('ROLLBACK');
      assert.equal(await count('stream = $1', ['tx-rollback']), 0);
      assert.equal((await t.app.events.stream('tx-rollback')).length, 0);

      await client.query('BEGIN');
      await t.app.events.append({ stream: 'tx-commit', type: 'T', data: {} }, { client });
      await t.app.events.append({ stream: 'tx-commit', type: 'T', data: {} }, { client });
      await client.query('COMMIT');
      const events = await t.app.events.stream('tx-commit');
      assert.deepEqual(
        events.map((e) => e.streamVersion),
        [1, 2],
      );
      // A rolled back append does not burn a stream version either.
      const next = await t.app.events.append({ stream: 'tx-rollback', type: 'T', data: {} });
      assert.equal(next.streamVersion, 1);
    } finally {
      client.release();
    }
  });

  it('does not store an idempotency key twice, across calls and within one batch', async () => {
    const first = await t.app.events.append({
      stream: 'idem',
      type: 'T',
      data: 'first',
      idempotencyKey: 'k-1',
    });
    const again = await t.app.events.append({
      stream: 'idem',
      type: 'T',
      data: 'second',
      idempotencyKey: 'k-1',
    });
    assert.equal(again.duplicate, true);
    assert.equal(again.position, first.position);
    assert.equal(again.data, 'first', 'returns the stored event, not the new input');

    const batch = await t.app.events.append([
      { stream: 'idem', type: 'T', data: 'a', idempotencyKey: 'k-2' },
      { stream: 'idem', type: 'T', data: 'b', idempotencyKey: 'k-2' },
      { stream: 'idem', type: 'T', data: 'c', idempotencyKey: 'k-1' },
      { stream: 'idem', type: 'T', data: 'd' },
    ]);
    assert.deepEqual(
      batch.map((e) => [e.data, e.duplicate, e.streamVersion]),
      [
        ['a', false, 2],
        ['a', true, 2],
        ['first', true, 1],
        ['d', false, 3],
      ],
    );
    assert.equal(await count('stream = $1', ['idem']), 3);
  });

  it('concurrent idempotent appends of the same key store it once', async () => {
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        t.app.events.append({ stream: 'idem-race', type: 'T', data: i, idempotencyKey: 'race' }),
      ),
    );
    assert.equal(new Set(results.map((e) => e.position)).size, 1);
    assert.equal(results.filter((e) => !e.duplicate).length, 1);
    assert.equal(await count('stream = $1', ['idem-race']), 1);
  });

  it('checks expectedVersion: a number, no_stream, any; a mismatch writes nothing', async () => {
    await t.app.events.append({ stream: 'ov', type: 'T', data: 1 }, { expectedVersion: 'no_stream' });
    await t.app.events.append({ stream: 'ov', type: 'T', data: 2 }, { expectedVersion: 1 });
    await t.app.events.append({ stream: 'ov', type: 'T', data: 3 }, { expectedVersion: 'any' });
    const mismatch = (expectedVersion: ExpectedVersion, actual: number) =>
      assert.rejects(
        t.app.events.append(
          [
            { stream: 'ov', type: 'T', data: 'x' },
            { stream: 'ov', type: 'T', data: 'y' },
          ],
          { expectedVersion },
        ),
        (error: unknown) => {
          assert.ok(error instanceof ConcurrencyError);
          assert.equal(error.code, 'OUTBATCH_CONCURRENCY');
          assert.deepEqual([error.stream, error.expected, error.actual], ['ov', expectedVersion, actual]);
          assert.match(error.message, /stream "ov" is at version 3, expected/);
          return true;
        },
      );
    await mismatch(2, 3);
    await mismatch('no_stream', 3);
    await mismatch(0, 3);
    assert.equal(await count('stream = $1', ['ov']), 3);
    // Per stream, for a batch over several streams.
    await assert.rejects(
      t.app.events.append(
        [
          { stream: 'ov', type: 'T', data: 4 },
          { stream: 'ov-2', type: 'T', data: 1 },
        ],
        { expectedVersion: { ov: 3, 'ov-2': 1 } },
      ),
      ConcurrencyError,
    );
    assert.equal(await count('stream = ANY($1)', [['ov', 'ov-2']]), 3);
    const ok = await t.app.events.append(
      [
        { stream: 'ov', type: 'T', data: 4 },
        { stream: 'ov-2', type: 'T', data: 1 },
      ],
      { expectedVersion: { ov: 3, 'ov-2': 'no_stream' } },
    );
    assert.deepEqual(
      ok.map((e) => e.streamVersion),
      [4, 1],
    );
  });

  it('a retried append whose events are all stored succeeds without checking expectedVersion', async () => {
    const event = { stream: 'retry', type: 'T', data: 1, idempotencyKey: 'retry-1' };
    const first = await t.app.events.append(event, { expectedVersion: 'no_stream' });
    const retried = await t.app.events.append(event, { expectedVersion: 'no_stream' });
    assert.equal(retried.position, first.position);
    assert.equal(retried.duplicate, true);
  });

  it('concurrent appenders to one stream without expectedVersion all succeed, versions contiguous', async () => {
    const appenders = 16;
    const perAppender = 10;
    await Promise.all(
      Array.from({ length: appenders }, async (_, a) => {
        for (let i = 0; i < perAppender; i++) {
          const batch = i % 3 === 0 ? 3 : 1;
          await t.app.events.append(
            Array.from({ length: batch }, () => ({ stream: 'hot', type: 'T', data: a })),
          );
        }
      }),
    );
    const versions = (await t.app.events.stream('hot')).map((e) => e.streamVersion);
    const expected = appenders * (4 * 3 + 6); // i = 0,3,6,9 write 3 events; the other 6 write 1
    assert.equal(versions.length, expected);
    assert.deepEqual(
      versions,
      Array.from({ length: expected }, (_, i) => i + 1),
    );
  });

  it('under contention on expectedVersion exactly one writer wins each version', async () => {
    const writers = 8;
    const rounds = 5;
    let conflicts = 0;
    await Promise.all(
      Array.from({ length: writers }, async (_, w) => {
        for (let written = 0; written < rounds; ) {
          const current = (await t.app.events.stream('contended')).length;
          try {
            await t.app.events.append(
              { stream: 'contended', type: 'T', data: { w, after: current } },
              { expectedVersion: current },
            );
            written += 1;
          } catch (error) {
            if (!(error instanceof ConcurrencyError)) throw error;
            assert.ok(error.actual > current);
            conflicts += 1;
          }
        }
      }),
    );
    const events = await t.app.events.stream('contended');
    assert.equal(events.length, writers * rounds);
    // Each event was written by a writer that had seen exactly the events before it.
    events.forEach((e, i) => {
      assert.equal((e.data as { after: number }).after, i);
    });
    assert.ok(conflicts > 0, 'the writers did contend');
  });

  it('large batches (the COPY path) follow the same rules: caller transaction, order, versions', async () => {
    const batch = (tag: string, n = 1200) =>
      Array.from({ length: n }, (_, i) => ({ stream: `copy-${i % 7}`, type: 'Bulk', data: { tag, i } }));
    const client = await t.pool.connect();
    try {
      await client.query('BEGIN');
      await t.app.events.append(batch('rolled-back'), { client });
      await client.query('ROLLBACK');
      assert.equal(await count("data->>'tag' = 'rolled-back'"), 0);

      await client.query('BEGIN');
      const inTx = await t.app.events.append(batch('in-tx'), { client });
      await client.query('COMMIT');
      // An idle client: the append opens and commits its own transaction on it.
      const idle = await t.app.events.append(batch('idle'), { client });
      assert.equal(await count("data->>'tag' = ANY('{in-tx,idle}')"), 2400);
      for (const stored of [inTx, idle]) {
        assert.deepEqual(
          stored.map((e) => (e.data as { i: number }).i),
          Array.from({ length: 1200 }, (_, i) => i),
        );
        for (let i = 1; i < stored.length; i++) assert.ok(stored[i]!.position > stored[i - 1]!.position);
      }
      const fromDb = await t.app.events.get(idle[5]!.position);
      assert.deepEqual({ ...fromDb, duplicate: false }, idle[5]);
    } finally {
      client.release();
    }
  });

  it('concurrent large appends to different streams return the positions the events were stored at', async () => {
    // Their COPYs draw from the position sequence at once, so a batch's positions may
    // interleave with another's: what each append returns must still match the table.
    const appended = await Promise.all(
      Array.from({ length: 4 }, (_, w) =>
        t.app.events.append(
          Array.from({ length: 3000 }, (_, i) => ({
            stream: `apart-${w}-${i % 5}`,
            type: 'T',
            data: { w, i },
          })),
        ),
      ),
    );
    const { rows } = await t.pool.query(
      `SELECT position::text, stream, stream_version, data FROM "${t.schema}".events WHERE stream LIKE 'apart-%'`,
    );
    const stored = new Map(rows.map((row) => [row.position, row]));
    assert.equal(stored.size, 12_000);
    for (const batch of appended) {
      for (const event of batch) {
        const row = stored.get(event.position.toString());
        assert.deepEqual(
          { stream: row.stream, version: Number(row.stream_version), data: row.data },
          { stream: event.stream, version: event.streamVersion, data: event.data },
        );
        assert.equal(event.checkpoint, `${event.txId}:${event.position}`);
      }
    }
  });

  it('concurrent large and single appends to the same streams keep versions contiguous', async () => {
    await Promise.all([
      ...Array.from({ length: 4 }, (_, w) =>
        t.app.events.append(
          Array.from({ length: 1500 }, (_, i) => ({ stream: `mix-${i % 3}`, type: 'T', data: { w, i } })),
        ),
      ),
      ...Array.from({ length: 4 }, async (_, w) => {
        for (let i = 0; i < 30; i++)
          await t.app.events.append({ stream: `mix-${i % 3}`, type: 'T', data: { w, i } });
      }),
    ]);
    for (const stream of ['mix-0', 'mix-1', 'mix-2']) {
      const versions = (await t.app.events.stream(stream)).map((e) => e.streamVersion);
      assert.deepEqual(
        versions,
        Array.from({ length: 2040 }, (_, i) => i + 1),
      );
    }
  });
});
