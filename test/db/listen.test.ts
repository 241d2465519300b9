import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pg from 'pg';
import { filter, firstValueFrom, type Observable, ReplaySubject, take, toArray } from 'rxjs';
import { type ListenEvent, listen } from '../../src/db/listen.js';
import { ValidationError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { databaseUrl, uniqueSchema } from '../helpers.js';

describe('listen()', () => {
  it('delivers notifications, reconnects after the backend is terminated, and closes on unsubscribe', async () => {
    const channel = uniqueSchema('ch');
    const pool = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
    const appName = `listen-test-${channel}`;
    const events$ = new ReplaySubject<ListenEvent>();
    const subscription = listen({
      url: databaseUrl(),
      channels: [channel],
      log: silentLogger(),
      initialDelayMs: 10,
      applicationName: appName,
    }).subscribe(events$);
    const backends = async () =>
      (await pool.query('SELECT pid FROM pg_stat_activity WHERE application_name = $1', [appName])).rows.map(
        (r) => r.pid as number,
      );
    const connected = (n: number) => nth(events$, (e) => e.kind === 'connected', n);
    const notified = (n: number) => nth(events$, (e) => e.kind === 'notification', n);
    try {
      await connected(1);
      await pool.query('SELECT pg_notify($1, $2)', [channel, 'one']);
      assert.deepEqual(await notified(1), { kind: 'notification', channel, payload: 'one' });

      const [pid] = await backends();
      await pool.query('SELECT pg_terminate_backend($1)', [pid]);
      await connected(2);
      await pool.query('SELECT pg_notify($1, $2)', [channel, 'two']);
      assert.deepEqual(await notified(2), { kind: 'notification', channel, payload: 'two' });
      assert.notEqual((await backends())[0], pid);
    } finally {
      subscription.unsubscribe();
    }
    for (let i = 0; (await backends()).length > 0; i++) {
      assert.ok(i < 500, 'the listening connection was closed');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await pool.end();
  });

  it('errors (no retry) when the failure is not retryable, and validates channel names', async () => {
    const url = new URL(databaseUrl());
    url.pathname = '/no_such_database_outbatch';
    await assert.rejects(
      firstValueFrom(listen({ url: url.toString(), channels: ['x'], log: silentLogger() })),
      /does not exist/,
    );
    assert.throws(
      () => listen({ url: databaseUrl(), channels: ['Bad-Name'], log: silentLogger() }),
      ValidationError,
    );
  });
});

/** The n-th event matching `match` (1-based), from a replaying source. */
function nth(source: Observable<ListenEvent>, match: (e: ListenEvent) => boolean, n: number) {
  return firstValueFrom(source.pipe(filter(match), take(n), toArray())).then((all) => all[n - 1]);
}
