import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import pg from 'pg';
import { formatCheckpoint, laterCheckpoint, parseCheckpoint } from '../../src/events/checkpoint.js';
import { databaseUrl } from '../helpers.js';

const pool = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
after(() => pool.end());

const part = fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 40n }), fc.constantFrom(0n, 1n, 2n ** 63n - 1n));
const checkpoint = fc.record({ txId: part, position: fc.bigInt({ min: 0n, max: 2n ** 63n - 1n }) });

function compare(a: { txId: bigint; position: bigint }, b: { txId: bigint; position: bigint }): number {
  if (a.txId !== b.txId) return a.txId < b.txId ? -1 : 1;
  return a.position === b.position ? 0 : a.position < b.position ? -1 : 1;
}

describe('checkpoints (property)', () => {
  it('round-trip through their text form', () => {
    fc.assert(
      fc.property(checkpoint, (c) => {
        assert.deepEqual(parseCheckpoint(formatCheckpoint(c)), { txId: c.txId, position: c.position });
      }),
    );
  });

  it('laterCheckpoint is the maximum in the readers’ (tx_id, position) order', () => {
    fc.assert(
      fc.property(checkpoint, checkpoint, (a, b) => {
        const later = laterCheckpoint(a, b);
        assert.ok(compare(later, a) >= 0 && compare(later, b) >= 0);
        assert.ok(later === a || later === b);
      }),
    );
  });

  it('order the same in PostgreSQL (row comparison on xid8, bigint) as in JavaScript', async () => {
    const pairs = fc.sample(fc.tuple(checkpoint, checkpoint), 300);
    const { rows } = await pool.query<{ lt: boolean[]; eq: boolean[] }>(
      `SELECT array_agg((a_tx::xid8, a_pos) < (b_tx::xid8, b_pos) ORDER BY i) AS lt,
              array_agg((a_tx::xid8, a_pos) = (b_tx::xid8, b_pos) ORDER BY i) AS eq
       FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) WITH ORDINALITY AS t(a_tx, a_pos, b_tx, b_pos, i)`,
      [
        pairs.map(([a]) => a.txId.toString()),
        pairs.map(([a]) => a.position.toString()),
        pairs.map(([, b]) => b.txId.toString()),
        pairs.map(([, b]) => b.position.toString()),
      ],
    );
    pairs.forEach(([a, b], i) => {
      assert.equal(rows[0]!.lt[i], compare(a, b) < 0, `${formatCheckpoint(a)} < ${formatCheckpoint(b)}`);
      assert.equal(rows[0]!.eq[i], compare(a, b) === 0);
    });
  });

  it('reject anything that is not two whole numbers in range', () => {
    fc.assert(
      fc.property(fc.string(), (text) => {
        if (/^\d{1,19}:\d{1,19}$/.test(text)) return;
        assert.throws(() => parseCheckpoint(text), /checkpoint .* is invalid: expected "<tx_id>:<position>"/);
      }),
    );
  });
});
