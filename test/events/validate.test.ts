import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { IdempotencyConflictError, ValidationError } from '../../src/errors.js';
import type { NewEvent } from '../../src/events/validate.js';
import { isolatedApp, type TestApp } from '../helpers.js';

describe('events.append validation', () => {
  let t: TestApp;
  before(async () => {
    t = await isolatedApp('ev_validate', { events: { maxEventBytes: 1000 } });
  });
  after(async () => t.cleanup());

  const stored = async () =>
    Number((await t.pool.query(`SELECT count(*) FROM "${t.schema}".events`)).rows[0].count);

  /** Appends [good, bad, good]: the whole batch must be rejected with `message` and nothing stored. */
  const rejects = async (bad: unknown, message: RegExp, options: object = {}) => {
    const before = await stored();
    const good = { stream: 's', type: 'T', data: 1 };
    await assert.rejects(t.app.events.append([good, bad as NewEvent, good], options), (error: unknown) => {
      assert.ok(error instanceof ValidationError, `expected ValidationError, got ${error}`);
      assert.match(error.message, message);
      assert.ok(!error.message.includes('\n'), 'one line');
      return true;
    });
    assert.equal(await stored(), before, 'nothing written');
  };

  it('requires stream and type: non-empty, at most 200 characters', async () => {
    await rejects({ type: 'T', data: 1 }, /^events\[1\]\.stream is missing: expected a non-empty string/);
    await rejects({ stream: '', type: 'T', data: 1 }, /events\[1\]\.stream is an empty string/);
    await rejects({ stream: 's', type: 42, data: 1 }, /events\[1\]\.type is 42/);
    await rejects(
      { stream: 'x'.repeat(201), type: 'T', data: 1 },
      /stream is 201 characters long: expected at most 200/,
    );
    await rejects({ stream: 's', type: 'é'.repeat(201), data: 1 }, /type is 201 characters long/);
    // 200 is fine, counted in characters, not UTF-16 units.
    await t.app.events.append({ stream: '😀'.repeat(200), type: 't'.repeat(200), data: 1 });
  });

  it('rejects what is not JSON, naming the path of the bad value', async () => {
    const event = (data: unknown) => ({ stream: 's', type: 'T', data });
    await rejects(event(undefined), /events\[1\]\.data is missing/);
    await rejects(event({ f: () => 1 }), /events\[1\]\.data\.f is a function/);
    await rejects(
      event({ items: [{ price: 10n }] }),
      /events\[1\]\.data\.items\[0\]\.price is a BigInt \(10n\)/,
    );
    const circular: Record<string, unknown> = { a: { b: {} } };
    (circular.a as { b: Record<string, unknown> }).b.back = circular;
    await rejects(
      event(circular),
      /events\[1\]\.data\.a\.b\.back refers back to an enclosing object \(a cycle\)/,
    );
    await rejects(event([1, undefined]), /events\[1\]\.data\[1\] is undefined/);
    await rejects(event({ n: Number.NaN }), /data\.n is NaN/);
    await rejects(event({ s: Symbol('x') }), /data\.s is a symbol/);
    await rejects(event(new Map()), /data is a Map/);
    await rejects(event({ text: 'a\u0000b' }), /data\.text contains a NUL character/);
    await rejects({ ...event(1), metadata: [] }, /metadata is an array: expected a JSON object/);
    await rejects({ ...event(1), metadata: { at: () => 1 } }, /metadata\.at is a function/);
    await rejects({ ...event(1), idempotencyKey: '' }, /idempotencyKey is an empty string/);
    await rejects(null, /events\[1\] is null: expected an object/);
  });

  it('accepts shared (non-circular) references, dates, null data and undefined properties', async () => {
    const shared = { x: 1 };
    const e = await t.app.events.append({
      stream: 's-ok',
      type: 'T',
      data: { a: shared, b: shared, at: new Date('2026-01-01T00:00:00Z'), gone: undefined },
    });
    assert.deepEqual(e.data, { a: { x: 1 }, b: { x: 1 }, at: '2026-01-01T00:00:00.000Z' });
    assert.equal((await t.app.events.append({ stream: 's-ok', type: 'T', data: null })).data, null);
  });

  it('limits the size of one event (configurable, here 1000 bytes)', async () => {
    await rejects(
      { stream: 's', type: 'T', data: 'é'.repeat(499) },
      /events\[1\] \(stream "s", type "T"\) is 1002 bytes of JSON: the limit is 1000 bytes \(maxEventBytes\)/,
    );
    await rejects(
      { stream: 's', type: 'T', data: 1, metadata: { pad: 'x'.repeat(1000) } },
      /limit is 1000 bytes/,
    );
    await t.app.events.append({ stream: 's', type: 'T', data: 'x'.repeat(900) });
  });

  it('checks expectedVersion before writing', async () => {
    await rejects({ stream: 's', type: 'T', data: 1 }, /expectedVersion is -1: expected a version >= 0/, {
      expectedVersion: -1,
    });
    await rejects(
      { stream: 's2', type: 'T', data: 1 },
      /needs every event in one stream, but this append has 2/,
      {
        expectedVersion: 1,
      },
    );
    await rejects({ stream: 's', type: 'T', data: 1 }, /expectedVersion names stream "other" but no event/, {
      expectedVersion: { other: 1 },
    });
    await rejects({ stream: 's', type: 'T', data: 1 }, /expectedVersion\["s"\] is "latest"/, {
      expectedVersion: { s: 'latest' },
    });
  });

  it('rejects a single bad event with "event" as its path', async () => {
    await assert.rejects(
      t.app.events.append({ stream: 's', type: '', data: 1 }),
      /^ValidationError: event\.type is an empty string/,
    );
  });

  it('the same new key from two open transactions: the later one gets a retryable IdempotencyConflictError', async () => {
    const a = await t.pool.connect();
    const b = await t.pool.connect();
    try {
      await a.query('BEGIN');
      await b.query('BEGIN');
      const bPid = (await b.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      await t.app.events.append(
        { stream: 'race-a', type: 'T', data: 1, idempotencyKey: 'same' },
        { client: a },
      );
      const later = t.app.events.append(
        { stream: 'race-b', type: 'T', data: 2, idempotencyKey: 'same' },
        { client: b },
      );
      // It rejects as soon as a commits, possibly before assert.rejects below is reached:
      // mark it handled now so the test runner does not count an unhandled rejection.
      later.catch(() => {});
      // Commit a only once b waits on the unique index for a's outcome.
      await waitForLock(t, bPid);
      await a.query('COMMIT');
      await assert.rejects(later, (error: unknown) => {
        assert.ok(error instanceof IdempotencyConflictError);
        assert.equal(error.retryable, true);
        return true;
      });
      await b.query('ROLLBACK');
      const retried = await t.app.events.append({
        stream: 'race-b',
        type: 'T',
        data: 2,
        idempotencyKey: 'same',
      });
      assert.equal(retried.duplicate, true);
      assert.equal(retried.stream, 'race-a');
    } finally {
      a.release();
      b.release();
    }
  });
});

async function waitForLock(t: TestApp, pid: number): Promise<void> {
  for (;;) {
    const { rows } = await t.pool.query('SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1', [pid]);
    if (rows[0]?.wait_event_type === 'Lock') return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
