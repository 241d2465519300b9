import assert from 'node:assert/strict';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import pg from 'pg';
import { concatMap, defer } from 'rxjs';
import { REVENUE_OPTIONS, revenuePipeline, revenueProcessor } from '../../pipelines/shop/revenue.js';
import { createShopTables } from '../../pipelines/shop/tables.js';
import { createApp, createLogger } from '../../src/index.js';
import { databaseUrl, ROOT, uniqueSchema } from '../helpers.js';
import { spawnWorker, waitFor } from '../jobs/support.js';

const pool = new pg.Pool({ connectionString: databaseUrl(), max: 12 });
const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  await pool.end();
});

async function shopSetup(label: string) {
  const schema = uniqueSchema(label);
  const shop = `${schema}_shop`;
  const app = createApp({ databaseUrl: databaseUrl(), schema, logger: createLogger({ level: 'silent' }) });
  await app.migrate();
  await createShopTables(pool, shop);
  cleanups.push(async () => {
    await app.close();
    await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE; DROP SCHEMA IF EXISTS "${shop}" CASCADE`);
  });
  return { app, schema, shop };
}

/** The projection computed straight from the events table. */
async function expected(schema: string) {
  const { rows } = await pool.query(
    `SELECT data->>'customerId' AS customer, to_char((recorded_at AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD') AS day,
            sum(CASE type WHEN 'OrderRefunded' THEN -1 ELSE 1 END)::int AS orders,
            sum(CASE type WHEN 'OrderRefunded' THEN -1 ELSE 1 END * (data->>'amountCents')::bigint)::text AS amount
     FROM "${schema}".events GROUP BY 1, 2 ORDER BY 1, 2`,
  );
  return rows;
}

async function projected(shop: string) {
  const { rows } = await pool.query(
    `SELECT customer, to_char(day, 'YYYY-MM-DD') AS day, orders, amount_cents::text AS amount
     FROM "${shop}".revenue WHERE version = 1 AND (orders <> 0 OR amount_cents <> 0) ORDER BY 1, 2`,
  );
  return rows;
}

async function caughtUp(app: ReturnType<typeof createApp>, name: string) {
  const [status] = await app.processors.status(name);
  return status !== undefined && status.lagEvents === 0 && status.state !== 'running';
}

function order(i: number, refund = false) {
  return {
    stream: `order-${i}`,
    type: refund ? 'OrderRefunded' : 'OrderPlaced',
    data: { orderId: String(i), customerId: `customer-${i % 37}`, amountCents: 100 + (i % 1000) },
  };
}

/**
 * `appenders` concurrent connections append batches; some hold the transaction open a
 * while before committing (their events commit after later positions), some roll back.
 */
async function appendConcurrently(app: ReturnType<typeof createApp>, total: number, appenders = 8) {
  let next = 0;
  let committed = 0;
  let rolledBack = 0;
  const appender = async (seed: number) => {
    let random = seed;
    const rand = () => {
      random = (random * 1103515245 + 12345) % 2 ** 31;
      return random / 2 ** 31;
    };
    const client = await pool.connect();
    try {
      while (committed < total) {
        const size = Math.min(total - committed, 50 + Math.floor(rand() * 450));
        if (size <= 0) break;
        const batch = Array.from({ length: size }, () => order(next++, rand() < 0.05));
        await client.query('BEGIN');
        await app.events.append(batch, { client });
        if (rand() < 0.3) await new Promise((resolve) => setTimeout(resolve, Math.floor(rand() * 150)));
        if (rand() < 0.1) {
          await client.query('ROLLBACK');
          rolledBack += size;
        } else {
          await client.query('COMMIT');
          committed += size;
        }
      }
    } finally {
      client.release();
    }
  };
  await Promise.all(Array.from({ length: appenders }, (_, i) => appender(i + 1)));
  return { committed, rolledBack };
}

describe('processor projection', () => {
  it('100k events from 8 appenders (held open, rolled back) while it runs: projection equals the aggregation', async () => {
    const { app, schema, shop } = await shopSetup('proj_live');
    revenueProcessor(app, shop);
    const controller = new AbortController();
    const running = app.run({ concurrency: 4, signal: controller.signal });
    const { committed, rolledBack } = await appendConcurrently(app, 100_000);
    assert.ok(rolledBack > 0, 'some transactions rolled back');
    await waitFor('the projection to catch up', () => caughtUp(app, 'revenue-by-customer-day'), 120_000);
    controller.abort();
    await running;
    const { rows } = await pool.query(`SELECT count(*)::int AS n FROM "${schema}".events`);
    assert.equal(rows[0].n, committed);
    const want = await expected(schema);
    assert.ok(want.length > 30);
    assert.deepEqual(await projected(shop), want);
    const [status] = await app.processors.status('revenue-by-customer-day');
    assert.equal(status!.eventsProcessed, String(committed));
  });

  it('a worker process SIGKILLed mid-run and a new one started: projection still exact', async () => {
    const { app, schema, shop } = await shopSetup('proj_kill');
    for (let i = 0; i < 20; i++)
      await app.events.append(Array.from({ length: 1000 }, (_, j) => order(i * 1000 + j)));
    const env = { OUTBATCH_SHOP_SCHEMA: shop, OUTBATCH_TEST_SLOW_PAGE_MS: '100' };
    const fixture = path.join(ROOT, 'test', 'fixtures', 'processor-app.ts');
    const first = spawnWorker(schema, ['--stall-timeout', '2s'], fixture, env);
    const processedSoFar = async () => {
      const { rows } = await pool.query(`SELECT events_processed::int AS n FROM "${schema}".processors`);
      return rows[0]?.n ?? 0;
    };
    try {
      await waitFor(
        `the first worker to commit some pages (output: ${first.output()})`,
        async () => (await processedSoFar()) >= 2000,
        60_000,
      );
    } finally {
      first.child.kill('SIGKILL');
      await first.exited;
    }
    const atKill = await processedSoFar();
    assert.ok(atKill < 20_000, 'killed before the end');
    const second = spawnWorker(schema, ['--stall-timeout', '2s'], fixture, {
      ...env,
      OUTBATCH_TEST_SLOW_PAGE_MS: '0',
    });
    try {
      await waitFor(
        'the second worker to finish',
        async () => (await processedSoFar()) === 20_000 && caughtUp(app, 'revenue-by-customer-day'),
        60_000,
      );
    } finally {
      second.child.kill('SIGTERM');
      await second.exited;
    }
    assert.deepEqual(await projected(shop), await expected(schema));
  });

  it('two workers racing for one processor never run it twice at once', async () => {
    const { app, schema, shop } = await shopSetup('proj_race');
    await pool.query(`CREATE TABLE "${shop}".overlaps (at timestamptz DEFAULT now())`);
    const overlapPool = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
    cleanups.push(() => overlapPool.end());
    const lockKey = Math.floor(Math.random() * 1e9);
    const pipeline = revenuePipeline(shop);
    const makeWorkerApp = () => {
      const instance = createApp({
        databaseUrl: databaseUrl(),
        schema,
        logger: createLogger({ level: 'silent' }),
      });
      instance.processor(
        'revenue-by-customer-day',
        { ...REVENUE_OPTIONS, trigger: { onAppend: { debounce: { milliseconds: 20 } } }, batchSize: 200 },
        (events$, ctx) =>
          // A second run at the same time would fail to take this page-long lock: count it.
          defer(() =>
            ctx.tx.query<{ got: boolean }>('SELECT pg_try_advisory_xact_lock($1) AS got', [lockKey]),
          ).pipe(
            concatMap(async (result) => {
              if (!result.rows[0]!.got)
                await overlapPool.query(`INSERT INTO "${shop}".overlaps DEFAULT VALUES`);
            }),
            concatMap(() => pipeline(events$, ctx)),
          ),
      );
      return instance;
    };
    const [a, b] = [makeWorkerApp(), makeWorkerApp()];
    cleanups.push(
      () => a.close(),
      () => b.close(),
    );
    const controller = new AbortController();
    const runs = [
      a.run({ concurrency: 2, signal: controller.signal }),
      b.run({ concurrency: 2, signal: controller.signal }),
    ];
    await appendConcurrently(app, 20_000, 4);
    await waitFor('the projection to catch up', () => caughtUp(app, 'revenue-by-customer-day'), 60_000);
    controller.abort();
    await Promise.all(runs);
    const { rows } = await pool.query(`SELECT count(*)::int AS n FROM "${shop}".overlaps`);
    assert.equal(rows[0].n, 0);
    assert.deepEqual(await projected(shop), await expected(schema));
  });
});
