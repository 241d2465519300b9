/**
 * The outbox under single network faults, through the fault proxy: a bulk append cut
 * mid-COPY stores nothing of its batch; a bulk append whose COMMIT reply is lost is
 * stored once; a worker whose LISTEN connection is cut keeps picking up jobs.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createApp } from '../../src/app.js';
import { type FaultProxy, startFaultProxy } from '../faultProxy.js';
import { isolatedApp, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

let t: TestApp;
let proxy: FaultProxy;
before(async () => {
  t = await isolatedApp('events_faults');
  proxy = await startFaultProxy(process.env.DATABASE_URL!);
});
after(async () => {
  await proxy.close();
  await t.cleanup();
});

const batch = (stream: string, n: number) =>
  Array.from({ length: n }, (_, i) => ({ stream, type: 'Counted', data: { i } }));
const stored = async (stream: string) =>
  Number(
    (await t.pool.query(`SELECT count(*) FROM "${t.schema}".events WHERE stream = $1`, [stream])).rows[0]
      .count,
  );

describe('appends under faults', () => {
  it('a bulk append cut mid-COPY stores nothing of its batch, and the next append works', async () => {
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema });
    try {
      // The COPY has started on the server; its data (one CopyData message here) never arrives.
      const { fired } = proxy.addRule({ match: (m) => m.type === 'd', action: 'cut' });
      await assert.rejects(app.events.append(batch('copy-cut', 5_000)));
      await fired;
      assert.equal(await stored('copy-cut'), 0);
      await app.events.append(batch('copy-cut', 5_000));
      assert.equal(await stored('copy-cut'), 5_000);
    } finally {
      await app.close();
    }
  });

  it("a bulk append in the caller's transaction whose COMMIT reply is lost: stored once", async () => {
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema });
    try {
      const pool = (await app.database()).pool;
      const client = await pool.connect();
      const { fired } = proxy.addRule({ match: /^COMMIT/, action: 'lose-reply' });
      try {
        await client.query('BEGIN');
        await app.events.append(batch('commit-lost', 2_000), { client });
        await assert.rejects(client.query('COMMIT'));
      } finally {
        client.release(true);
      }
      await fired;
      assert.equal(await stored('commit-lost'), 2_000);
    } finally {
      await app.close();
    }
  });
});

describe('the worker under faults', () => {
  it('a worker whose LISTEN connection is cut reconnects and keeps running jobs', async () => {
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema });
    const ran: string[] = [];
    app.task('listened', {}, async (_args, ctx) => {
      ran.push(ctx.job.id);
    });
    const controller = new AbortController();
    // A long poll interval: jobs are picked up by NOTIFY (or the claim after a reconnection).
    const running = app.run({ pollInterval: 600_000, signal: controller.signal });
    try {
      await waitFor('the LISTEN connection', async () =>
        proxy.connections().some((c) => c.applicationName === 'outbatch-listen'),
      );
      const first = await app.defer('listened', {});
      await waitFor('the first job', async () => first.enqueued && ran.includes(first.id));
      assert.equal(
        proxy.cut((c) => c.applicationName === 'outbatch-listen'),
        1,
      );
      await waitFor('the LISTEN connection to come back', async () =>
        proxy.connections().some((c) => c.applicationName === 'outbatch-listen'),
      );
      const second = await app.defer('listened', {});
      await waitFor('a job after the cut', async () => second.enqueued && ran.includes(second.id));
      assert.equal(ran.length, 2);
    } finally {
      controller.abort();
      await running;
      await app.close();
    }
  });
});
