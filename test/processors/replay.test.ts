import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { concatMap, from, timer } from 'rxjs';
import { REVENUE_OPTIONS, revenuePipeline } from '../../pipelines/shop/revenue.js';
import { createShopTables } from '../../pipelines/shop/tables.js';
import { type App, createApp, createLogger } from '../../src/index.js';
import { databaseUrl, runCli, startCli, uniqueSchema } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

const pool = new pg.Pool({ connectionString: databaseUrl(), max: 6 });
const schema = uniqueSchema('replay');
const shop = `${schema}_shop`;
const NAME = 'revenue-by-customer-day';
let app: App;
/** Per version, how long each page takes: a slow version shows the other is never blocked. */
const slowMs: Record<number, number> = {};
/** While set, every page waits for it: a run stays in progress as long as a test needs. */
let gate: Promise<void> | undefined;
const controller = new AbortController();
let running: Promise<void>;
let orderNo = 0;

async function appendOrders(count: number) {
  const events = Array.from({ length: count }, () => {
    const n = orderNo++;
    return {
      stream: `order-${n}`,
      type: 'OrderPlaced',
      data: { orderId: String(n), customerId: `c${n % 11}`, amountCents: 100 + n },
    };
  });
  await app.events.append(events);
}

async function expected() {
  const { rows } = await pool.query(
    `SELECT data->>'customerId' AS customer, sum((data->>'amountCents')::bigint)::text AS amount, count(*)::int AS orders
     FROM "${schema}".events GROUP BY 1 ORDER BY 1`,
  );
  return rows;
}

async function projected(version: number) {
  const { rows } = await pool.query(
    `SELECT customer, sum(amount_cents)::text AS amount, sum(orders)::int AS orders
     FROM "${shop}".revenue WHERE version = $1 GROUP BY 1 ORDER BY 1`,
    [version],
  );
  return rows;
}

async function status(version = 1) {
  const list = await app.processors.status(NAME);
  return list.find((s) => s.version === version)!;
}

const caughtUp =
  (version = 1) =>
  async () => {
    const s = await status(version);
    return s.lagEvents === 0 && s.state === 'idle';
  };

before(async () => {
  app = createApp({ databaseUrl: databaseUrl(), schema, logger: createLogger({ level: 'silent' }) });
  await app.migrate();
  await createShopTables(pool, shop);
  const pipeline = revenuePipeline(shop);
  app.processor(
    NAME,
    { ...REVENUE_OPTIONS, batchSize: 200, trigger: { onAppend: { debounce: { milliseconds: 20 } } } },
    (events$, ctx) =>
      from(gate ?? Promise.resolve()).pipe(
        concatMap(() => timer(slowMs[ctx.version] ?? 0)),
        concatMap(() => pipeline(events$, ctx)),
      ),
  );
  app.task('audit-orders', {}, async () => {});
  running = app.run({ concurrency: 4, signal: controller.signal, pollInterval: 50 });
  // status() knows a processor once a worker has recorded it; app.run does that as it starts.
  await waitFor('the worker to record the processor', async () => {
    const { rows } = await pool.query(`SELECT count(*)::int AS n FROM "${schema}".processors`);
    return rows[0].n === 1;
  });
  await appendOrders(3000);
  await waitFor('the projection to catch up', caughtUp());
});

after(async () => {
  controller.abort();
  await running;
  await app.close();
  await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE; DROP SCHEMA IF EXISTS "${shop}" CASCADE`);
  await pool.end();
});

const cli = (args: string[]) => runCli([...args, '--schema', schema]);

describe('replay', () => {
  it('--dry-run reports the events by type and changes nothing', async () => {
    // Paused, so that no run moves the checkpoint to the read horizon meanwhile.
    await app.processors.pause(NAME);
    await waitFor('the processor to stop', async () => (await status()).state === 'paused');
    const before = await status();
    const rows = (await pool.query(`SELECT count(*)::int AS n FROM "${shop}".revenue`)).rows[0].n;
    const result = await cli(['replay', NAME, '--from', 'start', '--dry-run', '--json']);
    assert.equal(result.code, 0, result.stderr);
    const plan = JSON.parse(result.stdout);
    assert.equal(plan.events, 3000);
    assert.deepEqual(plan.byType, [{ type: 'OrderPlaced', count: 3000 }]);
    assert.equal(plan.applied, false);
    assert.equal((await status()).checkpoint, before.checkpoint);
    assert.equal((await pool.query(`SELECT count(*)::int AS n FROM "${shop}".revenue`)).rows[0].n, rows);
    await app.processors.resume(NAME);
  });

  it('refuses without --yes off a terminal, and past the head, with one line', async () => {
    const noYes = await cli(['replay', NAME, '--from', 'start']);
    assert.equal(noYes.code, 2);
    assert.match(noYes.stderr.trim(), /^outbatch: this changes a processor: pass --yes to confirm/);
    const future = await cli(['replay', NAME, '--from', '2999-01-01T00:00:00Z', '--yes']);
    assert.equal(future.code, 2);
    assert.match(future.stderr.trim(), /--from 2999-01-01T00:00:00Z is past the head/);
    const bad = await cli(['replay', NAME, '--from', 'yesterday', '--yes']);
    assert.match(bad.stderr.trim(), /--from "yesterday" is invalid: expected "start", an event position/);
  });

  it('a truncated projection, replayed from the start, equals the aggregation again', async () => {
    await pool.query(`TRUNCATE "${shop}".revenue`);
    const result = await cli([
      'replay',
      NAME,
      '--from',
      'start',
      '--yes',
      '--reason',
      'truncated by mistake',
      '--json',
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(JSON.parse(result.stdout).applied, true);
    await waitFor('the replay to finish', caughtUp());
    assert.deepEqual(await projected(1), await expected());
    const history = await cli(['replay', '--history', NAME, '--json']);
    const [last] = JSON.parse(history.stdout);
    assert.equal(last.action, 'processors.replay');
    assert.equal(last.details.reason, 'truncated by mistake');
    assert.equal(last.details.checkpoint, '0:0');
  });

  it('a replay during a live run waits for it (--no-wait fails fast): the run finishes, then the rewind', async () => {
    // A projection that adds: a full pass, then a full replay, makes exactly twice the totals.
    // Had the rewind cut into the running pass, the first pass would be partial.
    await app.processors.pause(NAME);
    await pool.query(`TRUNCATE "${shop}".revenue`);
    await app.processors.replay(NAME, { from: 'start' });
    let release = () => {};
    gate = new Promise((resolve) => {
      release = resolve;
    });
    await app.processors.resume(NAME);
    await waitFor('a run to be in progress', async () => (await status()).state === 'running');
    const busy = await cli(['replay', NAME, '--from', 'start', '--yes', '--no-wait', '--detach']);
    assert.equal(busy.code, 1);
    assert.match(busy.stderr.trim(), /is running a batch: try again, or leave out --no-wait/);
    const waiting = startCli(['replay', NAME, '--from', 'start', '--yes', '--detach', '--schema', schema]);
    await waitFor(
      'the replay to wait for the run',
      async () =>
        waiting.output().includes('processor "revenue-by-customer-day" is running a batch: waiting for it'),
      undefined,
      async () => waiting.output(),
    );
    gate = undefined;
    release();
    const waited = await waiting.result;
    assert.equal(waited.code, 0, waited.stderr);
    await waitFor('the replay to finish', caughtUp());
    const twice = (await expected()).map((row) => ({
      ...row,
      amount: String(2n * BigInt(row.amount)),
      orders: 2 * row.orders,
    }));
    assert.deepEqual(await projected(1), twice);
  });

  it('rebuilds a new version beside the live one while events arrive; promotion waits for it to catch up', async () => {
    slowMs[2] = 1000;
    const rebuilt = await cli(['replay', NAME, '--rebuild', '--yes', '--detach', '--json']);
    assert.equal(rebuilt.code, 0, rebuilt.stderr);
    assert.equal(JSON.parse(rebuilt.stdout).version, 2);
    await appendOrders(500);
    // The live version keeps serving while version 2 is still far behind.
    await waitFor('version 1 to take the new events', caughtUp(1));
    assert.ok((await status(2)).lagEvents > 0, 'version 2 is still rebuilding');
    const early = await cli(['processors', 'promote', NAME, '2']);
    assert.equal(early.code, 2);
    assert.match(early.stderr.trim(), /version 2 has not caught up \(\d+ events behind\)/);
    slowMs[2] = 0;
    await waitFor('version 2 to catch up', caughtUp(2));
    const promoted = await cli(['processors', 'promote', NAME, '2', '--reason', 'new rounding']);
    assert.equal(promoted.code, 0, promoted.stderr);
    const versions = await app.processors.status(NAME);
    assert.deepEqual(
      versions.map((v) => [v.version, v.active, v.state]),
      [
        [1, false, 'retired'],
        [2, true, 'idle'],
      ],
    );
    assert.deepEqual(await projected(2), await expected());
    await appendOrders(100);
    await waitFor('version 2 to serve new events', caughtUp(2));
    assert.deepEqual(await projected(2), await expected());
    const history = JSON.parse((await cli(['replay', '--history', NAME, '--json'])).stdout);
    assert.deepEqual(
      history.slice(0, 2).map((h: { action: string }) => h.action),
      ['processors.promote', 'processors.rebuild'],
    );
  });
});

describe('events replay (re-drive to a task)', () => {
  it('defers one job per batch; the same re-drive twice defers no duplicates', async () => {
    const args = [
      'events',
      'replay',
      '--types',
      'OrderPlaced',
      '--from',
      'start',
      '--to-task',
      'audit-orders',
      '--batch',
      '1000',
      '--json',
    ];
    const dry = JSON.parse((await cli([...args, '--dry-run'])).stdout);
    assert.equal(dry.deferred, 0);
    const total = dry.events;
    controller.abort(); // stop the worker so the deferred jobs stay waiting
    await running;
    const first = JSON.parse((await cli(args)).stdout);
    assert.equal(first.events, total);
    assert.equal(first.deferred, Math.ceil(total / 1000));
    const second = JSON.parse((await cli(args)).stdout);
    assert.equal(second.deferred, 0);
    assert.equal(second.alreadyEnqueued, first.deferred);
    const { rows } = await pool.query(
      `SELECT count(*)::int AS n FROM "${schema}".jobs WHERE task = 'audit-orders'`,
    );
    assert.equal(rows[0].n, first.deferred);
    const job = (
      await pool.query(`SELECT args FROM "${schema}".jobs WHERE task = 'audit-orders' ORDER BY id LIMIT 1`)
    ).rows[0];
    assert.equal(job.args.events.length, 1000);
    assert.equal(job.args.events[0].type, 'OrderPlaced');
  });
});
