// @smoke
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import pg from 'pg';
import { createPool, redactUrl } from '../../src/db/connection.js';
import { isRetryable } from '../../src/db/retryable.js';
import { withTransaction } from '../../src/db/transaction.js';
import { createLogger } from '../../src/log.js';
import { databaseUrl } from '../helpers.js';

function capture() {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      lines.push(String(chunk));
      done();
    },
  });
  return { stream, text: () => lines.join('') };
}

describe('database access', () => {
  it('classifies retryable failures from one table', () => {
    for (const code of ['40001', '40P01', '57P01', '57P03', '08006', 'ECONNRESET', 'ECONNREFUSED']) {
      assert.equal(isRetryable(Object.assign(new Error('x'), { code })), true, code);
    }
    for (const code of ['23505', '42P01', '22P02']) {
      assert.equal(isRetryable(Object.assign(new Error('x'), { code })), false, code);
    }
    assert.equal(isRetryable(new Error('Connection terminated unexpectedly')), true);
    assert.equal(
      isRetryable(new Error('boom', { cause: Object.assign(new Error(), { code: '40P01' }) })),
      true,
    );
    assert.equal(isRetryable('not an error'), false);
  });

  it('survives an idle connection killed by the server, then serves the next query', async () => {
    const out = capture();
    const log = createLogger({ level: 'warn', destination: out.stream, pretty: false });
    const pool = createPool(databaseUrl(), log, { max: 2 });
    try {
      const { rows } = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      const killer = new pg.Client({ connectionString: databaseUrl() });
      await killer.connect();
      await killer.query('SELECT pg_terminate_backend($1)', [rows[0]!.pid]);
      await killer.end();
      await new Promise((resolve) => setTimeout(resolve, 200));
      const after = await pool.query<{ one: number }>('SELECT 1 AS one');
      assert.equal(after.rows[0]!.one, 1);
      assert.match(out.text(), /idle database connection lost/);
    } finally {
      await pool.end();
    }
  });

  it('withTransaction commits on success and rolls back on error', async () => {
    const pool = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
    const table = `pg_temp_tx_${process.pid}`;
    try {
      await pool.query(`CREATE TABLE IF NOT EXISTS public.${table} (v int)`);
      await withTransaction(pool, (client) => client.query(`INSERT INTO public.${table} VALUES (1)`));
      await assert.rejects(
        withTransaction(pool, async (client) => {
          await client.query(`INSERT INTO public.${table} VALUES (2)`);
          throw new Error('undo');
        }),
        /undo/,
      );
      const { rows } = await pool.query(`SELECT array_agg(v)::int[] AS vs FROM public.${table}`);
      assert.deepEqual(rows[0].vs, [1]);
    } finally {
      await pool.query(`DROP TABLE IF EXISTS public.${table}`);
      await pool.end();
    }
  });

  it('redacts connection strings and passwords from logs', () => {
    const out = capture();
    const log = createLogger({ level: 'info', destination: out.stream, pretty: false });
    log.info(
      { databaseUrl: 'postgres://u:hunter2@h/db', password: 'hunter2', nested: { password: 'hunter2' } },
      'x',
    );
    assert.doesNotMatch(out.text(), /hunter2/);
    assert.match(out.text(), /\[redacted\]/);
    assert.equal(redactUrl('postgres://u:hunter2@h:5/db'), 'postgres://u:***@h:5/db');
  });

  it('rejects an invalid LOG_LEVEL with a clear message', () => {
    assert.throws(
      () => createLogger({ level: 'loud' }),
      /LOG_LEVEL "loud" is invalid: use one of fatal, error/,
    );
  });
});
