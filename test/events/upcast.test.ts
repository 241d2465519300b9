import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { firstValueFrom, take, toArray } from 'rxjs';
import {
  type App,
  bulkWrite,
  createApp,
  START_CHECKPOINT,
  type StoredEvent,
  UpcastError,
  ValidationError,
} from '../../src/index.js';
import { databaseUrl, isolatedApp, runCli, type TestApp } from '../helpers.js';
import { processorState, waitFor } from '../jobs/support.js';
import { waitUntilReadable } from './readable.js';

// OrderPlaced's shapes over time: the total as a string of euros, then cents, then cents
// with a currency. The code of each time is an app of its own on the same schema.
type V1 = { total: string };
type V2 = { totalCents: number };
type V3 = { totalCents: number; currency: string };
const toV2 = (data: V1): V2 => ({ totalCents: Math.round(Number(data.total) * 100) });
const toV3 = (data: V2): V3 => ({ ...data, currency: 'EUR' });

let t: TestApp;
let q: string;
/** The code before any version: appends v1. */
let old1: App;
/** The code of version 2: one upcaster. */
let old2: App;
/** Versions the totals processor's pipeline was handed, and the redriven task's arguments. */
const seenVersions = new Set<number>();
const received: { event: { position: string; version: number; data: unknown } }[] = [];
const controller = new AbortController();
let running: Promise<void>;

before(async () => {
  t = await isolatedApp('upcast');
  q = `"${t.schema}"`;
  old1 = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
  old2 = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
  old2.upcast('OrderPlaced', 1, toV2);
  // Today's code: the whole chain, registered where the app is defined.
  t.app.upcast('OrderPlaced', 1, toV2);
  t.app.upcast('OrderPlaced', 2, toV3);
  t.app.upcast('Fragile', 1, (data: { n: number; bad?: boolean }) => {
    if (data.bad) throw new Error(`no n for ${data.n}`);
    return { n: data.n, checked: true };
  });
  t.app.upcast('Hollow', 1, () => undefined);

  await t.pool.query(`
    CREATE TABLE ${q}.totals (position bigint PRIMARY KEY, cents bigint NOT NULL, currency text NOT NULL);
    CREATE TABLE ${q}.fragile_seen (n int PRIMARY KEY)`);
  t.app.processor(
    'totals',
    {
      types: ['OrderPlaced'],
      streamPrefix: 'shop-',
      batchSize: 3,
      trigger: { onAppend: { debounce: { milliseconds: 10 } } },
    },
    (events$, ctx) =>
      events$.pipe(
        bulkWrite(
          ctx.tx,
          `INSERT INTO ${q}.totals SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])
           ON CONFLICT (position) DO UPDATE SET cents = EXCLUDED.cents, currency = EXCLUDED.currency`,
          (events: StoredEvent[]) => {
            for (const event of events) seenVersions.add(event.version);
            const data = events.map((event) => event.data as V3);
            return [
              events.map((e) => e.position.toString()),
              data.map((d) => d.totalCents),
              data.map((d) => d.currency),
            ];
          },
        ),
      ),
  );
  t.app.processor(
    'fragile',
    {
      types: ['Fragile'],
      batchSize: 10,
      onPoison: 'skip',
      retry: { attempts: 1, backoff: { initial: { milliseconds: 10 }, max: { milliseconds: 20 } } },
      trigger: { onAppend: { debounce: { milliseconds: 10 } } },
    },
    (events$, ctx) =>
      events$.pipe(
        bulkWrite(
          ctx.tx,
          `INSERT INTO ${q}.fragile_seen SELECT unnest($1::int[])`,
          (events: StoredEvent[]) => [events.map((event) => (event.data as { n: number }).n)],
        ),
      ),
  );
  t.app.task('receive', {}, async (args: (typeof received)[number]) => {
    received.push(args);
  });
  running = t.app.run({ concurrency: 4, signal: controller.signal, pollInterval: 50 });
});

after(async () => {
  controller.abort();
  await running;
  await Promise.all([old1.close(), old2.close()]);
  await t.cleanup();
});

async function stored(prefix: string) {
  const { rows } = await t.pool.query(
    `SELECT type_version, data FROM ${q}.events WHERE starts_with(stream, $1) ORDER BY position`,
    [prefix],
  );
  return rows.map((row) => [row.type_version, row.data]);
}

describe('event type versions and upcasting', () => {
  it('reads every version of a type in the current shape, through a chain of two upcasters', async () => {
    await old1.events.append({ stream: 'read-1', type: 'OrderPlaced', data: { total: '12.50' } });
    await old2.events.append({ stream: 'read-2', type: 'OrderPlaced', data: { totalCents: 990 } });
    const v3 = await t.app.events.append({
      stream: 'read-3',
      type: 'OrderPlaced',
      data: { totalCents: 5, currency: 'SEK' },
    });
    assert.equal(v3.version, 3, 'an append without a version records the current one');

    // Stored as each code wrote it, and never rewritten by reading.
    const asStored = [
      [1, { total: '12.50' }],
      [2, { totalCents: 990 }],
      [3, { totalCents: 5, currency: 'SEK' }],
    ];
    assert.deepEqual(await stored('read-'), asStored);

    const current = [
      { version: 3, data: { totalCents: 1250, currency: 'EUR' } },
      { version: 3, data: { totalCents: 990, currency: 'EUR' } },
      { version: 3, data: { totalCents: 5, currency: 'SEK' } },
    ];
    const shape = (events: StoredEvent[]) => events.map(({ version, data }) => ({ version, data }));
    // Another file's open transaction may hold the read horizon back for a while.
    await waitUntilReadable(t.pool, t.schema);
    const page = await t.app.events.read({ types: ['OrderPlaced'], streamPrefix: 'read-' });
    assert.deepEqual(shape(page.events), current);
    assert.deepEqual(shape(await t.app.events.stream('read-1')), current.slice(0, 1));
    assert.deepEqual(shape([(await t.app.events.get(page.events[1]!.position))!]), current.slice(1, 2));
    assert.deepEqual(
      shape(await t.app.events.last({ types: ['OrderPlaced'], streamPrefix: 'read-' })),
      current,
    );
    const followed = await firstValueFrom(
      t.app.events
        .follow(START_CHECKPOINT, { types: ['OrderPlaced'], streamPrefix: 'read-', pollIntervalMs: 50 })
        .pipe(take(3), toArray()),
    );
    assert.deepEqual(shape(followed), current);

    // The version-2 code knows no version 3: it gets that event as stored, version saying so.
    const older = await old2.events.read({ types: ['OrderPlaced'], streamPrefix: 'read-' });
    assert.deepEqual(shape(older.events), [
      { version: 2, data: { totalCents: 1250 } },
      { version: 2, data: { totalCents: 990 } },
      { version: 3, data: { totalCents: 5, currency: 'SEK' } },
    ]);
    assert.deepEqual(await stored('read-'), asStored, 'reading rewrote nothing');
  });

  it('records an explicit version, and the current one on every append path', async () => {
    const one = await t.app.events.append({
      stream: 'explicit-1',
      type: 'OrderPlaced',
      data: { total: '1.01' },
      version: 1,
    });
    assert.equal(one.version, 1, 'append returns the event as stored');
    const [fresh, other] = await t.app.events.append([
      { stream: 'explicit-2', type: 'OrderPlaced', data: { totalCents: 7 }, version: 2 },
      { stream: 'explicit-2', type: 'Unversioned', data: {} },
    ]);
    assert.deepEqual([fresh!.version, other!.version], [2, 1]);
    // 1000+ events without keys: the COPY path.
    const bulk = await t.app.events.append(
      Array.from({ length: 1000 }, (_, i) => ({
        stream: `explicit-bulk-${i % 5}`,
        type: 'OrderPlaced',
        data: { totalCents: i, currency: 'EUR' },
      })),
    );
    assert.ok(bulk.every((event) => event.version === 3));
    const { rows } = await t.pool.query(
      `SELECT type, type_version, count(*)::int AS n FROM ${q}.events
       WHERE starts_with(stream, 'explicit-') GROUP BY 1, 2 ORDER BY 1, 2`,
    );
    assert.deepEqual(rows, [
      { type: 'OrderPlaced', type_version: 1, n: 1 },
      { type: 'OrderPlaced', type_version: 2, n: 1 },
      { type: 'OrderPlaced', type_version: 3, n: 1000 },
      { type: 'Unversioned', type_version: 1, n: 1 },
    ]);
    const read = await t.app.events.stream('explicit-1');
    assert.deepEqual(read[0]!.data, { totalCents: 101, currency: 'EUR' });

    for (const version of [0, 1.5, -1, '2', 2 ** 31]) {
      await assert.rejects(
        t.app.events.append({ stream: 'bad', type: 'OrderPlaced', data: {}, version: version as number }),
        (error: Error) =>
          error instanceof ValidationError &&
          /^event\.version is .+: expected a whole number >= 1/.test(error.message) &&
          !error.message.includes('\n'),
      );
    }
  });

  it('a processor replaying across a version change sees only the current shape', async () => {
    await old1.events.append([
      { stream: 'shop-1', type: 'OrderPlaced', data: { total: '10.00' } },
      { stream: 'shop-2', type: 'OrderPlaced', data: { total: '0.99' } },
    ]);
    await old2.events.append({ stream: 'shop-3', type: 'OrderPlaced', data: { totalCents: 300 } });
    await waitUntilReadable(t.pool, t.schema);
    const expected = async () =>
      (await t.app.events.read({ types: ['OrderPlaced'], streamPrefix: 'shop-', limit: 100 })).events.map(
        (e) => ({ position: e.position.toString(), ...(e.data as V3) }),
      );
    const projected = async () =>
      (
        await t.pool.query(
          `SELECT position::text, cents::int AS "totalCents", currency FROM ${q}.totals ORDER BY position`,
        )
      ).rows;
    const caughtUp = async () => {
      const [status] = await t.app.processors.status('totals');
      return status?.lagEvents === 0 && status.state === 'idle';
    };
    await waitFor(
      'the processor to catch up',
      async () => (await projected()).length === 3 && (await caughtUp()),
      20_000,
      () => processorState(t.pool, t.schema, 'totals'),
    );
    assert.deepEqual(await projected(), await expected());

    // The projection is lost, and today's code writes version 3 (and a lagging writer 1).
    await t.pool.query(`DELETE FROM ${q}.totals`);
    await t.app.events.append([
      { stream: 'shop-4', type: 'OrderPlaced', data: { totalCents: 4, currency: 'USD' } },
      { stream: 'shop-5', type: 'OrderPlaced', data: { total: '5.55' }, version: 1 },
    ]);
    await waitFor('the new events', async () => (await projected()).length === 2);
    seenVersions.clear();
    const plan = await t.app.processors.replay('totals', { from: 'start', reason: 'projection lost' });
    assert.equal(plan.applied, true);
    await waitFor(
      'the replay to finish',
      async () => (await caughtUp()) && (await projected()).length === 5,
      20_000,
      () => processorState(t.pool, t.schema, 'totals'),
    );
    const rebuilt = await projected();
    assert.deepEqual(rebuilt, await expected());
    assert.deepEqual(
      rebuilt.map((row) => [row.totalCents, row.currency]),
      [
        [1000, 'EUR'],
        [99, 'EUR'],
        [300, 'EUR'],
        [4, 'USD'],
        [555, 'EUR'],
      ],
    );
    assert.deepEqual([...seenVersions], [3]);
  });

  it('a re-drive hands the task the current shape', async () => {
    const [event] = await old1.events.append([
      { stream: 'redrive-1', type: 'OrderPlaced', data: { total: '2' } },
    ]);
    await waitUntilReadable(t.pool, t.schema);
    const result = await t.app.events.redrive({
      from: event!.position.toString(),
      types: ['OrderPlaced'],
      streamPrefix: 'redrive-',
      task: 'receive',
    });
    assert.equal(result.deferred, 1);
    const [args] = await waitFor('the re-driven job', async () =>
      received.length > 0 ? received : undefined,
    );
    assert.equal(args!.event.position, event!.position.toString());
    assert.equal(args!.event.version, 3);
    assert.deepEqual(args!.event.data, { totalCents: 200, currency: 'EUR' });
  });

  it('an upcaster that throws fails the read, naming the type, version and position', async () => {
    const [, bad] = await t.app.events.append([
      { stream: 'fragile-1', type: 'Fragile', data: { n: 1 }, version: 1 },
      { stream: 'fragile-2', type: 'Fragile', data: { n: 2, bad: true }, version: 1 },
      { stream: 'fragile-3', type: 'Fragile', data: { n: 3 }, version: 1 },
    ]);
    const message = `upcasting Fragile event at position ${bad!.position} from version 1 to 2 failed: no n for 2`;
    await waitUntilReadable(t.pool, t.schema);
    await assert.rejects(t.app.events.read({ types: ['Fragile'] }), (error: Error) => {
      assert.ok(error instanceof UpcastError);
      assert.equal(error.type, 'Fragile');
      assert.equal(error.fromVersion, 1);
      assert.equal(error.position, bad!.position);
      assert.ok(error.message.startsWith(message), error.message);
      assert.ok(!error.message.includes('\n'));
      return true;
    });
    await assert.rejects(t.app.events.get(bad!.position), UpcastError);

    // A processor counts it against that event: the one before commits, it is dead-lettered
    // (onPoison: 'skip'), the one after is processed.
    await waitFor(
      'the fragile processor to skip the event',
      async () => {
        const { rows } = await t.pool.query(`SELECT n FROM ${q}.fragile_seen ORDER BY n`);
        return rows.length === 2 ? rows : undefined;
      },
      20_000,
      () => processorState(t.pool, t.schema, 'fragile'),
    );
    const { rows } = await t.pool.query(
      `SELECT position::text, error FROM ${q}.processor_dead_letters WHERE processor = 'fragile'`,
    );
    assert.equal(rows.length, 1);
    assert.equal(rows[0].position, bad!.position.toString());
    assert.ok(rows[0].error.startsWith(message), rows[0].error);
    assert.deepEqual(
      (await t.pool.query(`SELECT n FROM ${q}.fragile_seen ORDER BY n`)).rows.map((row) => row.n),
      [1, 3],
    );

    await t.app.events.append({ stream: 'hollow', type: 'Hollow', data: 1, version: 1 });
    await assert.rejects(
      t.app.events.stream('hollow'),
      /from version 1 to 2 returned undefined: an upcaster returns/,
    );
  });

  it('the CLI appends the version it is given and shows events as stored', async () => {
    const env = { DATABASE_URL: databaseUrl(), OUTBATCH_SCHEMA: t.schema };
    const appended = await runCli(
      [
        '--json',
        'append',
        '--stream',
        'cli-1',
        '--type',
        'OrderPlaced',
        '--data',
        '{"totalCents":1}',
        '--type-version',
        '2',
      ],
      env,
    );
    assert.equal(appended.code, 0, appended.stderr);
    const { position, version } = JSON.parse(appended.stdout);
    assert.equal(version, 2);
    const shown = await runCli(['events', 'show', position], env);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /^type +OrderPlaced \(version 2, as stored: the CLI has no upcasters\)$/m);
    assert.match(shown.stdout, /"totalCents": 1\n}/);
    const refused = await runCli(
      ['append', '--stream', 'cli-1', '--type', 'OrderPlaced', '--data', '1', '--type-version', '0'],
      env,
    );
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /^outbatch: event\.version is 0: expected a whole number >= 1/);
    // Read by the app, the same event is upcast.
    assert.deepEqual((await t.app.events.stream('cli-1'))[0]!.data, { totalCents: 1, currency: 'EUR' });
  });

  it('refuses bad registrations with one line each', () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    const fn = (data: unknown) => data;
    const refused = (register: () => void, expected: RegExp) =>
      assert.throws(register, (error: Error) => {
        assert.ok(error instanceof ValidationError, String(error));
        assert.match(error.message, expected);
        assert.ok(!error.message.includes('\n'));
        return true;
      });
    refused(() => app.upcast('T', 2, fn), /^upcast\("T", 2\) leaves a gap: register upcast\("T", 1\) first/);
    refused(
      () => app.upcast('T', 0, fn),
      /^upcast\("T", 0\) has an invalid version: expected a whole number >= 1/,
    );
    refused(() => app.upcast('T', 1.5, fn), /has an invalid version/);
    refused(() => app.upcast('', 1, fn), /^upcast type is "": expected an event type name/);
    refused(
      () => app.upcast('T', 1, 'no' as unknown as typeof fn),
      /needs a function \(data, event\) => newData/,
    );
    app.upcast('T', 1, fn);
    app.upcast('T', 2, fn);
    refused(() => app.upcast('T', 1, fn), /^upcast\("T", 1\) is registered twice/);
    refused(() => app.upcast('T', 4, fn), /^upcast\("T", 4\) leaves a gap: register upcast\("T", 3\) first/);
    // The current app has appended and read: a later registration would change what it records.
    refused(
      () => t.app.upcast('Late', 1, fn),
      /^upcast\("Late", 1\) came after the app appended or read events: register upcasters where the app is defined, before first use$/,
    );
    return app.close();
  });
});
