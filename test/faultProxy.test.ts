// @smoke
/** The fault proxy itself: each fault lands where it says, or the tests built on it prove nothing. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { startFaultProxy } from './faultProxy.js';
import { databaseUrl, uniqueSchema } from './helpers.js';

const schema = uniqueSchema('fault_proxy');
const direct = new pg.Pool({ connectionString: databaseUrl(), max: 2 });

before(async () => {
  await direct.query(`CREATE SCHEMA "${schema}"`);
  await direct.query(`CREATE TABLE "${schema}".t (id int PRIMARY KEY)`);
});
after(async () => {
  await direct.query(`DROP SCHEMA "${schema}" CASCADE`);
  await direct.end();
});

async function throughProxy<T>(
  setup: (proxy: Awaited<ReturnType<typeof startFaultProxy>>) => void,
  fn: (client: pg.Client) => Promise<T>,
): Promise<{ error: unknown }> {
  const proxy = await startFaultProxy(databaseUrl());
  const client = new pg.Client({ connectionString: proxy.url, query_timeout: 3_000 });
  client.on('error', () => {});
  await client.connect();
  setup(proxy);
  let error: unknown;
  try {
    await fn(client);
  } catch (e) {
    error = e;
  }
  await client.end().catch(() => {});
  await proxy.close();
  return { error };
}

const exists = async (id: number) =>
  (await direct.query(`SELECT 1 FROM "${schema}".t WHERE id = $1`, [id])).rowCount === 1;

test('lose-reply: the server ran the statement, the client got an error', async () => {
  const { error } = await throughProxy(
    (proxy) => proxy.addRule({ match: 'INSERT INTO', action: 'lose-reply' }),
    (client) => client.query(`INSERT INTO "${schema}".t VALUES (1)`),
  );
  assert.ok(error, 'the client saw no error');
  assert.equal(await exists(1), true);
});

test('cut: the server never saw the statement', async () => {
  const { error } = await throughProxy(
    (proxy) => proxy.addRule({ match: 'INSERT INTO', action: 'cut' }),
    (client) => client.query(`INSERT INTO "${schema}".t VALUES (2)`),
  );
  assert.ok(error);
  assert.equal(await exists(2), false);
});

test('lose-reply on COMMIT: committed although the client saw the connection die', async () => {
  const { error } = await throughProxy(
    (proxy) => proxy.addRule({ match: /^COMMIT/, action: 'lose-reply' }),
    async (client) => {
      await client.query('BEGIN');
      await client.query(`INSERT INTO "${schema}".t VALUES (3)`);
      await client.query('COMMIT');
    },
  );
  assert.ok(error);
  assert.equal(await exists(3), true);
});

test('prepared statements match on every execution by name', async () => {
  let fired = 0;
  const { error } = await throughProxy(
    (proxy) => {
      void proxy.addRule({ match: 'named_insert', action: 'lose-reply' }).fired.then(() => {
        fired += 1;
      });
    },
    (client) =>
      client.query({ name: 'named_insert', text: `INSERT INTO "${schema}".t VALUES ($1)`, values: [4] }),
  );
  assert.ok(error);
  assert.equal(fired, 1);
  assert.equal(await exists(4), true);
});

test('half-open: the client hears nothing until its own timeout', async () => {
  const { error } = await throughProxy(
    (proxy) => proxy.addRule({ match: 'pg_sleep', action: 'half-open' }),
    (client) => client.query('SELECT pg_sleep(0)'),
  );
  assert.match(String(error), /timeout/i);
});

test('stall-reply delivers the reply late, intact', async () => {
  const { error } = await throughProxy(
    (proxy) => proxy.addRule({ match: 'stalled_select', action: 'stall-reply', stallMs: 200 }),
    async (client) => {
      const { rows } = await client.query(`SELECT 'stalled_select' AS v`);
      assert.equal(rows[0].v, 'stalled_select');
    },
  );
  assert.equal(error, undefined);
});
