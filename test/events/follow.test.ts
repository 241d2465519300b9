import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { firstValueFrom, take, toArray } from 'rxjs';
import { makeFollow } from '../../src/events/follow.js';
import type { ReadOptions } from '../../src/events/read.js';
import { captureLog, databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { waitUntilReadable } from './readable.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('ev_follow');
  await t.app.events.append([1, 2, 3].map((i) => ({ stream: 'followed', type: 'T', data: { i } })));
  await waitUntilReadable(t.pool, t.schema);
});
after(() => t.cleanup());

describe('follow() through an outage', () => {
  it('keeps reading through DNS failures and refused connections, warning once and saying when it is back', async () => {
    // The database's name service and then its port fail twice each, as during a failover.
    const outage = [
      Object.assign(new Error('getaddrinfo ENOTFOUND db.internal'), { code: 'ENOTFOUND' }),
      Object.assign(new Error('getaddrinfo EAI_AGAIN db.internal'), { code: 'EAI_AGAIN' }),
      Object.assign(new Error('connect ECONNREFUSED 10.0.0.5:5432'), { code: 'ECONNREFUSED' }),
    ];
    const read = async (options: ReadOptions) => {
      const failure = outage.shift();
      if (failure) throw failure;
      return t.app.events.read(options);
    };
    const { log, lines } = captureLog('debug');
    const follow = makeFollow({ read, url: async () => databaseUrl(), schema: t.schema, log });
    const events = await firstValueFrom(follow(undefined, { pollIntervalMs: 50 }).pipe(take(3), toArray()));
    assert.deepEqual(
      events.map((event) => (event.data as { i: number }).i),
      [1, 2, 3],
    );
    const records = lines.map((line) => JSON.parse(line));
    assert.deepEqual(
      records.filter((record) => record.level >= 40).map((record) => record.msg),
      ['following events: reading failed; retrying'],
    );
    assert.ok(records.some((record) => record.msg === 'following events: reading works again'));
  });

  it('ends with the error when the read is refused for a reason retrying cannot fix', async () => {
    const refusal = Object.assign(new Error('password authentication failed for user "app"'), {
      code: '28P01',
    });
    const follow = makeFollow({
      read: async () => {
        throw refusal;
      },
      url: async () => databaseUrl(),
      schema: t.schema,
      log: captureLog().log,
    });
    await assert.rejects(firstValueFrom(follow()), refusal);
  });
});
