import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ConcurrencyError } from '../../src/errors.js';
import type { NewEvent } from '../../src/events/validate.js';
import { isolatedApp, type TestApp } from '../helpers.js';

type Step = { events: NewEvent[]; expected?: Record<string, number | 'no_stream' | 'any'> };
type Outcome =
  | { rows: [string, number, unknown, boolean, number][] }
  | { conflict: { stream: string; expected: unknown; actual: number } };

// The same script through both paths; every outcome must match.
const SCRIPT: Step[] = [
  { events: [{ stream: 'a', type: 'T', data: 1 }] },
  { events: [{ stream: 'a', type: 'T', data: 2, idempotencyKey: 'k1' }], expected: { a: 1 } },
  { events: [{ stream: 'a', type: 'T', data: 3, idempotencyKey: 'k1' }], expected: { a: 0 } },
  { events: [{ stream: 'a', type: 'T', data: 4 }], expected: { a: 0 } },
  { events: [{ stream: 'b', type: 'T', data: 5 }], expected: { b: 'no_stream' } },
  { events: [{ stream: 'b', type: 'T', data: 6 }], expected: { b: 'no_stream' } },
  {
    events: [
      { stream: 'a', type: 'T', data: 7, idempotencyKey: 'k2' },
      { stream: 'b', type: 'T', data: 8, idempotencyKey: 'k2' },
      { stream: 'c', type: 'T', data: 9, idempotencyKey: 'k1' },
      { stream: 'b', type: 'T', data: 10 },
    ],
    expected: { a: 2, b: 'any' },
  },
  // Large enough for the TypeScript path's COPY; streams old and new, tabs and backslashes.
  {
    events: Array.from({ length: 1500 }, (_, i) => ({
      stream: ['a', 'b', 'new\tstream', `many-${i % 40}`][i % 4]!,
      type: i % 2 ? 'T' : 'Ty\\pe',
      data: { i, text: 'line\nbreak \\ "quoted"\ttab' },
    })),
  },
  { events: [{ stream: 'a', type: 'T', data: 'after bulk' }], expected: { a: 378 } },
  // Type versions ("type_version" in SQL): given or not, alone (ONE_EVENT), in a batch, by COPY.
  { events: [{ stream: 'v', type: 'V', data: 'one', version: 3 }] },
  {
    events: [
      { stream: 'v', type: 'V', data: 'two', version: 2, idempotencyKey: 'kv' },
      { stream: 'v', type: 'V', data: 'again', idempotencyKey: 'kv' },
      { stream: 'w', type: 'V', data: 'three' },
    ],
  },
  { events: [{ stream: 'v', type: 'V', data: 'dup', version: 5, idempotencyKey: 'kv' }] },
  {
    events: Array.from({ length: 1200 }, (_, i) => ({
      stream: `versioned-${i % 7}`,
      type: 'V',
      data: { i },
      ...(i % 3 === 0 ? {} : { version: i % 3 }),
    })),
  },
];

describe('append_events() in SQL behaves like app.events.append()', () => {
  let ts: TestApp;
  let sql: TestApp;
  before(async () => {
    [ts, sql] = await Promise.all([isolatedApp('ev_path_ts'), isolatedApp('ev_path_sql')]);
  });
  after(async () => Promise.all([ts.cleanup(), sql.cleanup()]));

  async function throughTs(step: Step): Promise<Outcome> {
    try {
      const rows = await ts.app.events.append(step.events, { expectedVersion: step.expected });
      return { rows: rows.map((e) => [e.stream, e.streamVersion, e.data, e.duplicate, e.version]) };
    } catch (error) {
      if (!(error instanceof ConcurrencyError)) throw error;
      return { conflict: { stream: error.stream, expected: error.expected, actual: error.actual } };
    }
  }

  async function throughSql(step: Step): Promise<Outcome> {
    // What a service in another language sends: snake_case keys, plain JSON.
    const events = step.events.map((e) => ({
      stream: e.stream,
      type: e.type,
      data: e.data,
      ...(e.idempotencyKey ? { idempotency_key: e.idempotencyKey } : {}),
      ...(e.version === undefined ? {} : { type_version: e.version }),
    }));
    try {
      const { rows } = await sql.pool.query(
        `SELECT stream, stream_version, data, duplicate, type_version FROM "${sql.schema}".append_events($1, $2)`,
        [JSON.stringify(events), step.expected ? JSON.stringify(step.expected) : null],
      );
      return {
        rows: rows.map((r) => [r.stream, Number(r.stream_version), r.data, r.duplicate, r.type_version]),
      };
    } catch (error) {
      const { code, detail } = error as { code?: string; detail?: string };
      if (code !== 'OB409') throw error;
      return { conflict: JSON.parse(detail!) };
    }
  }

  it('same versions, same idempotency, same concurrency errors', async () => {
    const outcomes: Outcome[] = [];
    for (const step of SCRIPT) {
      const [a, b] = [await throughTs(step), await throughSql(step)];
      assert.deepEqual(b, a, `step ${JSON.stringify(step)}`);
      outcomes.push(a);
    }
    // And the script means what it says.
    assert.deepEqual(outcomes[2], { rows: [['a', 2, 2, true, 1]] }, 'a stored key is not checked again');
    assert.deepEqual(outcomes[3], { conflict: { stream: 'a', expected: 0, actual: 2 } });
    assert.deepEqual(outcomes[5], { conflict: { stream: 'b', expected: 'no_stream', actual: 1 } });
    assert.deepEqual(outcomes[6], {
      rows: [
        ['a', 3, 7, false, 1],
        ['a', 3, 7, true, 1],
        ['a', 2, 2, true, 1],
        ['b', 2, 10, false, 1],
      ],
    });
    assert.deepEqual(outcomes[9], { rows: [['v', 1, 'one', false, 3]] });
    assert.deepEqual(
      outcomes[10],
      {
        rows: [
          ['v', 2, 'two', false, 2],
          ['v', 2, 'two', true, 2],
          ['w', 1, 'three', false, 1],
        ],
      },
      'a duplicate returns the stored version, not the one asked for',
    );
    assert.deepEqual(outcomes[11], { rows: [['v', 2, 'two', true, 2]] });
    const dump = async (t: TestApp) =>
      (
        await t.pool.query(
          `SELECT stream, stream_version, type, data, metadata, idempotency_key, type_version FROM "${t.schema}".events ORDER BY position`,
        )
      ).rows;
    assert.deepEqual(await dump(sql), await dump(ts));
  });

  it('rejects malformed input in SQL with a clear message', async () => {
    const call = (events: string, expected: string | null = null) =>
      sql.pool.query(`SELECT * FROM "${sql.schema}".append_events($1, $2)`, [events, expected]);
    await assert.rejects(call('{"stream":"a"}'), /events must be a JSON array/);
    await assert.rejects(call('[{"stream":"","type":"T","data":1}]'), /violates check constraint/);
    await assert.rejects(
      call('[{"stream":"a","type":"T","data":1,"type_version":0}]'),
      /events_type_version_check/,
    );
    await assert.rejects(
      call('[{"stream":"a","type":"T","data":1}]', '{"a":"latest"}'),
      /expected version "latest"/,
    );
    await assert.rejects(
      call('[{"stream":"a","type":"T","data":1}]', '{"zz":1}'),
      /names stream "zz" but no event/,
    );
  });

  it('a trigger on a business table can append in the same transaction', async () => {
    const s = `"${sql.schema}"`;
    await sql.pool.query(`
      CREATE TABLE ${s}.orders (id int PRIMARY KEY, total int);
      CREATE FUNCTION ${s}.orders_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM ${s}.append_events(jsonb_build_array(jsonb_build_object(
          'stream', 'order-' || NEW.id, 'type', 'OrderPlaced', 'data', to_jsonb(NEW))));
        RETURN NEW;
      END $$;
      CREATE TRIGGER orders_outbox AFTER INSERT ON ${s}.orders FOR EACH ROW EXECUTE FUNCTION ${s}.orders_outbox();`);
    await sql.pool.query(`INSERT INTO ${s}.orders VALUES (1, 10), (2, 20)`);
    await assert.rejects(sql.pool.query(`INSERT INTO ${s}.orders VALUES (3, 30), (1, 99)`));
    const { rows } = await sql.pool.query(
      `SELECT stream, data FROM ${s}.events WHERE type = 'OrderPlaced' ORDER BY position`,
    );
    assert.deepEqual(rows, [
      { stream: 'order-1', data: { id: 1, total: 10 } },
      { stream: 'order-2', data: { id: 2, total: 20 } },
    ]);
  });
});
