import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, describe, it } from 'node:test';
import pg from 'pg';
import { listen } from '../../src/db/listen.js';
import { ValidationError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { databaseUrl } from '../helpers.js';
import { waitFor } from './support.js';

const pool = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
after(() => pool.end());

describe('listen', () => {
  it('delivers notifications, and reconnects when its backend is terminated', async () => {
    const name = `listen_test_${randomBytes(4).toString('hex')}`;
    const channel = `${name}_jobs`;
    const connect = async () => {
      const client = new pg.Client({ connectionString: databaseUrl(), application_name: name });
      client.on('error', () => {});
      await client.connect();
      return client;
    };
    const received: string[] = [];
    const subscription = listen(connect, [channel], silentLogger()).subscribe((n) =>
      received.push(n.payload),
    );
    try {
      const deliver = (payload: string) =>
        waitFor(`notification ${payload}`, async () => {
          await pool.query('SELECT pg_notify($1, $2)', [channel, payload]);
          await new Promise((resolve) => setTimeout(resolve, 30));
          return received.includes(payload);
        });
      await deliver('before');
      const killed = await pool.query(
        'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1',
        [name],
      );
      assert.equal(killed.rowCount, 1);
      await deliver('after');
    } finally {
      subscription.unsubscribe();
    }
    await waitFor('the listener to disconnect', async () => {
      const { rowCount } = await pool.query('SELECT 1 FROM pg_stat_activity WHERE application_name = $1', [
        name,
      ]);
      return rowCount === 0;
    });
  });

  it('errors (no retry) when connecting fails for a reason retrying cannot fix', async () => {
    const error = await new Promise((resolve) => {
      listen(
        async () => {
          throw new ValidationError('bad url');
        },
        ['x'],
        silentLogger(),
      ).subscribe({ error: resolve });
    });
    assert.ok(error instanceof ValidationError);
  });
});
