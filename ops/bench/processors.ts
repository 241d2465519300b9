/**
 * Processor benchmark, on one PostgreSQL, in a schema of its own (dropped afterwards):
 *
 * 1. throughput: events/s through a processor whose pipeline counts events per type into
 *    a table (bulk upsert, checkpoint per page) vs a raw keyset scan of the same events;
 * 2. memory: peak RSS growth while a processor catches up on a large backlog;
 * 3. lag: with a steady append load and `onAppend`, the time from an event's commit to
 *    its page's commit, p50/p95/p99.
 *
 *   DATABASE_URL=postgres://... npx tsx ops/bench/processors.ts [--events 200000] [--backlog 1000000]
 *     [--rate 1000] [--seconds 30] [--batch-size 5000]
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { tap } from 'rxjs';
import { aggregateBy, bulkWrite, createApp, type StoredEvent } from '../../src/index.js';
import { renderChart } from './chart.js';

const { values: flags } = parseArgs({
  options: {
    events: { type: 'string', default: '200000' },
    backlog: { type: 'string', default: '1000000' },
    rate: { type: 'string', default: '1000' },
    seconds: { type: 'string', default: '30' },
    'batch-size': { type: 'string', default: '5000' },
    only: { type: 'string' },
  },
});
const url = process.env.DATABASE_URL;
if (!url) throw new Error('set DATABASE_URL to the PostgreSQL to benchmark against');
const admin = new pg.Pool({ connectionString: url, max: 4 });
/** Events per page, for the processor and the raw scan alike. */
const BATCH = Number(flags['batch-size']);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const TYPES = ['OrderPlaced', 'OrderPaid', 'OrderShipped', 'OrderRefunded'];

async function freshApp(label: string) {
  const schema = `bench_proc_${label}_${process.pid}`;
  await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  const app = createApp({ databaseUrl: url, schema });
  await app.migrate();
  await admin.query(`CREATE TABLE "${schema}".type_counts (type text PRIMARY KEY, n bigint NOT NULL)`);
  return { app, schema };
}

async function seed(app: ReturnType<typeof createApp>, count: number) {
  for (let done = 0; done < count; done += 10_000) {
    const batch = Array.from({ length: Math.min(10_000, count - done) }, (_, i) => ({
      stream: `order-${done + i}`,
      type: TYPES[(done + i) % TYPES.length]!,
      data: { orderId: done + i, amountCents: 100 + ((done + i) % 5000), note: 'benchmark event payload' },
    }));
    await app.events.append(batch);
  }
  await admin.query('VACUUM ANALYZE');
}

/** When the processor's pipeline first saw an event: the end of the worker's start-up. */
let firstEventAt: number | undefined;

function countingProcessor(app: ReturnType<typeof createApp>, schema: string, trigger: object) {
  firstEventAt = undefined;
  app.processor(
    'count-by-type',
    { trigger: trigger as never, batchSize: BATCH, maxRunTime: { minutes: 30 } },
    (events$, ctx) =>
      events$.pipe(
        tap(() => {
          firstEventAt ??= performance.now();
        }),
        aggregateBy(
          (event: StoredEvent) => event.type,
          () => 0,
          (n) => n + 1,
        ),
        bulkWrite(
          ctx.tx,
          `INSERT INTO "${schema}".type_counts AS c (type, n) SELECT * FROM unnest($1::text[], $2::bigint[])
         ON CONFLICT (type) DO UPDATE SET n = c.n + EXCLUDED.n`,
          (rows) => [rows.map((r) => r.key), rows.map((r) => r.value)],
        ),
      ),
  );
}

/**
 * Polls the processor's own counter: one primary-key read. (`processors.status()` counts the
 * lag, which scans up to a million index entries: polled every 50 ms it took a third of this
 * 2-core machine away from the processor being measured.)
 */
async function waitCaughtUp(schema: string, total: number, sample?: () => void, pollMs = 50) {
  for (;;) {
    // Until the worker has recorded the processor there is no row: keep waiting.
    const { rows } = await admin.query(
      `SELECT events_processed::bigint AS n FROM "${schema}".processors WHERE name = 'count-by-type'`,
    );
    sample?.();
    if (rows[0] && Number(rows[0].n) >= total) return;
    await sleep(pollMs);
  }
}

async function rawScan(schema: string): Promise<number> {
  const client = await admin.connect();
  try {
    let tx = '0';
    let position = '0';
    let n = 0;
    const started = performance.now();
    for (;;) {
      const { rows } = await client.query(
        `SELECT position::text, tx_id::text, stream, stream_version, type, data, metadata, recorded_at
         FROM "${schema}".events e WHERE (e.tx_id, e.position) > ($1::xid8, $2::bigint) AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY e.tx_id, e.position LIMIT $3`,
        [tx, position, BATCH],
      );
      if (rows.length === 0) break;
      n += rows.length;
      tx = rows.at(-1).tx_id;
      position = rows.at(-1).position;
    }
    return n / ((performance.now() - started) / 1000);
  } finally {
    client.release();
  }
}

async function throughput() {
  const total = Number(flags.events);
  const { app, schema } = await freshApp('tp');
  await seed(app, total);
  const scans = [await rawScan(schema), await rawScan(schema), await rawScan(schema)];
  countingProcessor(app, schema, { every: { hours: 1 } });
  const controller = new AbortController();
  const rssAtStart = process.memoryUsage().rss;
  let rssPeak = rssAtStart;
  const started = performance.now();
  const running = app.run({ concurrency: 2, signal: controller.signal });
  // Polled every 5 ms here: the end is known to within a few ms of a ~1 s run.
  await waitCaughtUp(
    schema,
    total,
    () => {
      rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    },
    5,
  );
  const ended = performance.now();
  const seconds = (ended - started) / 1000;
  const steadySeconds = (ended - firstEventAt!) / 1000;
  controller.abort();
  await running;
  const { rows } = await admin.query(`SELECT sum(n)::int AS n FROM "${schema}".type_counts`);
  if (rows[0].n !== total) throw new Error(`counted ${rows[0].n} of ${total}`);
  await app.close();
  await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
  const scan = scans.sort((a, b) => a - b)[1]!;
  const processor = total / steadySeconds;
  const withStartUp = total / seconds;
  console.log(
    `throughput: ${total} events, pages of ${BATCH} for both; processor ${Math.round(processor)} ev/s from its first event to the last commit (${Math.round(withStartUp)} ev/s with the worker's start-up, ${Math.round((seconds - steadySeconds) * 1000)} ms), raw keyset scan ${Math.round(scan)} ev/s (median of 3); ratio ${(processor / scan).toFixed(2)} (with start-up ${(withStartUp / scan).toFixed(2)}; target >= 0.65); RSS ${Math.round(rssAtStart / 1e6)} MB at the start, peak ${Math.round(rssPeak / 1e6)} MB`,
  );
}

async function memory() {
  const total = Number(flags.backlog);
  const { app, schema } = await freshApp('mem');
  await seed(app, total);
  countingProcessor(app, schema, { every: { hours: 1 } });
  global.gc?.();
  const start = process.memoryUsage().rss;
  let peak = start;
  const controller = new AbortController();
  const running = app.run({ concurrency: 2, signal: controller.signal });
  await waitCaughtUp(schema, total, () => {
    peak = Math.max(peak, process.memoryUsage().rss);
  });
  controller.abort();
  await running;
  await app.close();
  await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
  const mb = (bytes: number) => Math.round(bytes / 1024 / 1024);
  console.log(
    `memory: caught up on ${total} events; RSS start ${mb(start)} MB, peak ${mb(peak)} MB, growth ${mb(peak - start)} MB (target < 100 MB)`,
  );
}

async function lag() {
  const rate = Number(flags.rate);
  const seconds = Number(flags.seconds);
  const { app, schema } = await freshApp('lag');
  const lags: number[] = [];
  /** (seconds since the appends began, lag ms) per event, for the chart. */
  const timeline: { at: number; lag: number }[] = [];
  let appendsBegan = Number.POSITIVE_INFINITY;
  app.processor(
    'count-by-type',
    { trigger: { onAppend: { debounce: { milliseconds: 50 } } }, batchSize: 1000 },
    (events$, ctx) =>
      events$.pipe(
        aggregateBy(
          (event: StoredEvent) => event.type,
          () => [] as StoredEvent[],
          (list, event) => [...list, event],
        ),
        bulkWrite(
          ctx.tx,
          `INSERT INTO "${schema}".type_counts AS c (type, n) SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT (type) DO UPDATE SET n = c.n + EXCLUDED.n`,
          (rows) => {
            // The page commits right after this statement: sample each event's age now.
            const now = Date.now();
            for (const row of rows)
              for (const event of row.value) {
                const lag = now - Number(event.data && (event.data as { at: number }).at);
                lags.push(lag);
                timeline.push({ at: (now - appendsBegan) / 1000, lag });
              }
            return [rows.map((r) => r.key), rows.map((r) => r.value.length)];
          },
        ),
      ),
  );
  const controller = new AbortController();
  const running = app.run({ concurrency: 2, signal: controller.signal });
  await sleep(1000);
  const perTick = Math.max(1, Math.round(rate / 20));
  let appended = 0;
  appendsBegan = Date.now();
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    const tick = Date.now();
    // `at` is when the append starts: lag includes the append itself.
    const batch = Array.from({ length: perTick }, (_, i) => ({
      stream: `s-${appended + i}`,
      type: TYPES[i % 4]!,
      data: { at: 0 },
    }));
    const committedAt = Date.now();
    for (const event of batch) event.data.at = committedAt;
    await app.events.append(batch);
    appended += perTick;
    await sleep(Math.max(0, 50 - (Date.now() - tick)));
  }
  await waitCaughtUp(schema, appended);
  controller.abort();
  await running;
  await app.close();
  await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
  lags.sort((a, b) => a - b);
  const p = (q: number) => lags[Math.min(lags.length - 1, Math.floor(q * lags.length))]!;
  console.log(
    `lag: ${appended} events at ~${rate}/s for ${seconds} s with onAppend (debounce 50 ms); p50 ${p(0.5)} ms, p95 ${p(0.95)} ms, p99 ${p(0.99)} ms, max ${lags.at(-1)} ms (target p99 < 1000 ms)`,
  );
  writeLagChart(timeline, rate, seconds);
}

/** The lag over the run, per 2-second window (p50, p99, max), as JSON and an SVG chart. */
function writeLagChart(timeline: { at: number; lag: number }[], rate: number, seconds: number): void {
  const windows = new Map<number, number[]>();
  for (const { at, lag } of timeline) {
    const window = Math.floor(Math.max(0, at) / 2) * 2 + 2;
    windows.set(window, [...(windows.get(window) ?? []), lag]);
  }
  const keys = [...windows.keys()].sort((a, b) => a - b);
  const at = (q: number) =>
    keys.map((x) => {
      const sorted = windows.get(x)!.sort((a, b) => a - b);
      return { x, y: sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! };
    });
  const series = [
    { name: 'p50', points: at(0.5) },
    { name: 'p99', points: at(0.99) },
    { name: 'max', points: at(1), dashed: true },
  ];
  const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'results');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'processor-lag.json'),
    `${JSON.stringify({ rate, seconds, windowSeconds: 2, series }, null, 2)}\n`,
  );
  fs.writeFileSync(
    path.join(dir, 'processor-lag.svg'),
    renderChart({
      title: `Processor lag, append commit to page commit (~${rate} events/s, onAppend)`,
      xLabel: 'seconds into the run (2-s windows)',
      yLabel: 'ms',
      series,
    }),
  );
  process.stderr.write('wrote ops/bench/results/processor-lag.json and processor-lag.svg\n');
}

const only = flags.only?.split(',');
for (const [name, fn] of [
  ['throughput', throughput],
  ['memory', memory],
  ['lag', lag],
] as const) {
  if (!only || only.includes(name)) await fn();
}
await admin.end();
