/**
 * outbatch through PgBouncer (transaction mode) beside outbatch direct, on the same
 * PostgreSQL, each route in the same schema in turn (dropped afterwards). The PgBouncer is
 * the tests' (test/pgbouncer.ts): Debian's 1.18 on a free port from 6432, here with
 * `default_pool_size = 20` (PgBouncer's default) rather than the tests' 2.
 *
 *   DATABASE_URL=postgres://... npx tsx ops/bench/pgbouncer.ts [--jobs 20000] [--latency-jobs 300] [--single 2000] [--repeat 3]
 *
 * Routes: direct (prepared statements, LISTEN); PgBouncer with a direct `listenUrl`
 * (no prepared statements, LISTEN direct); PgBouncer without one (polling every 1 s, the
 * default) — for latency only, its throughput is the previous route's. Measures: defer one
 * at a time; bulk defer (1,000 per call); N queued no-op jobs at concurrency 10, from the
 * worker's start to the last handler start; idle latency defer -> handler start for jobs
 * deferred 10 ms apart. Figures go to ops/bench/RESULTS.md by hand.
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createApp } from '../../src/app.js';
import { startBouncer } from '../../test/pgbouncer.js';

const { values: flags } = parseArgs({
  options: {
    jobs: { type: 'string', default: '20000' },
    'latency-jobs': { type: 'string', default: '300' },
    single: { type: 'string', default: '2000' },
    repeat: { type: 'string', default: '3' },
  },
});
const JOBS = Number(flags.jobs);
const LATENCY_JOBS = Number(flags['latency-jobs']);
const SINGLE = Number(flags.single);
const REPEAT = Number(flags.repeat);
const url = process.env.DATABASE_URL;
if (!url) throw new Error('set DATABASE_URL to the PostgreSQL to benchmark against');

const schema = 'bench_pgbouncer';
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const admin = new pg.Pool({ connectionString: url, max: 2 });

interface Route {
  name: string;
  databaseUrl: string;
  listenUrl?: string;
  throughput: boolean;
}

interface Row {
  route: string;
  single?: number;
  bulk?: number;
  c10: number[];
  p50?: number;
  p95?: number;
  p99?: number;
}

async function purge(): Promise<void> {
  await admin.query(`DELETE FROM ${schema}.jobs`);
  await admin.query(`VACUUM ${schema}.jobs`);
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

async function measure(route: Route): Promise<Row> {
  const row: Row = { route: route.name, c10: [] };
  let onJob: (args: { t: number }) => void = () => {};
  const app = createApp({ databaseUrl: route.databaseUrl, listenUrl: route.listenUrl, schema });
  const task = app.task('noop', {}, async (args: { t: number }) => onJob(args));
  const startWorker = () => {
    const controller = new AbortController();
    const running = app.run({ concurrency: 10, signal: controller.signal });
    return async () => {
      controller.abort();
      await running;
    };
  };
  try {
    await app.migrate();
    await purge();
    if (route.throughput) {
      process.stderr.write(`${route.name}: defer one at a time\n`);
      let started = now();
      for (let i = 0; i < SINGLE; i += 1) await task.defer({ t: 0 });
      row.single = SINGLE / ((now() - started) / 1000);
      await purge();
      process.stderr.write(`${route.name}: bulk defer\n`);
      started = now();
      for (let i = 0; i < JOBS; i += 1_000) {
        await task.deferMany(Array.from({ length: Math.min(1_000, JOBS - i) }, () => ({ args: { t: 0 } })));
      }
      row.bulk = JOBS / ((now() - started) / 1000);
      for (let round = 0; round < REPEAT; round += 1) {
        process.stderr.write(`${route.name}: ${JOBS} jobs at concurrency 10 (round ${round + 1})\n`);
        if (round > 0) {
          await purge();
          for (let i = 0; i < JOBS; i += 1_000) {
            await task.deferMany(
              Array.from({ length: Math.min(1_000, JOBS - i) }, () => ({ args: { t: 0 } })),
            );
          }
        }
        let seen = 0;
        const all = new Promise<void>((resolve) => {
          onJob = () => {
            seen += 1;
            if (seen === JOBS) resolve();
          };
        });
        const begun = now();
        const stop = startWorker();
        await all;
        row.c10.push(JOBS / ((now() - begun) / 1000));
        await stop();
      }
      await purge();
    }
    process.stderr.write(`${route.name}: idle latency\n`);
    const samples: number[] = [];
    onJob = (args) => samples.push(now() - args.t);
    const stop = startWorker();
    await sleep(1_500); // idle, LISTEN connected
    for (let i = 0; i < LATENCY_JOBS; i += 1) {
      await task.defer({ t: now() });
      await sleep(10);
    }
    const deadline = Date.now() + 30_000;
    while (samples.length < LATENCY_JOBS && Date.now() < deadline) await sleep(20);
    await stop();
    const sorted = samples.sort((a, b) => a - b);
    Object.assign(row, {
      p50: percentile(sorted, 50),
      p95: percentile(sorted, 95),
      p99: percentile(sorted, 99),
    });
  } finally {
    await app.close();
  }
  return row;
}

async function main() {
  const bouncer = await startBouncer({ poolSize: 20 });
  const rows: Row[] = [];
  try {
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    const routes: Route[] = [
      { name: 'direct', databaseUrl: url!, throughput: true },
      { name: 'PgBouncer, listenUrl direct', databaseUrl: bouncer.url, listenUrl: url, throughput: true },
      { name: 'PgBouncer, no listenUrl (polling 1 s)', databaseUrl: bouncer.url, throughput: false },
    ];
    for (const route of routes) rows.push(await measure(route));
  } finally {
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await bouncer.stop();
  }
  const pgVersion = (await admin.query('SHOW server_version')).rows[0].server_version;
  await admin.end();
  const fmt = (n: number | undefined, digits = 0) => (n === undefined ? '-' : n.toFixed(digits));
  const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  console.log(
    `${new Date().toISOString()}; PostgreSQL ${pgVersion}, PgBouncer 1.18 (transaction mode, default_pool_size 20), Node ${process.version}, load average ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(
        ' ',
      )}; ${JOBS} jobs per throughput run, ${LATENCY_JOBS} latency samples, ${SINGLE} single defers\n`,
  );
  console.log(
    '| route | defer 1-by-1 (jobs/s) | bulk, 1000/call (jobs/s) | process c=10 (jobs/s) | idle latency p50 / p95 / p99 (ms) |',
  );
  console.log('|---|---:|---:|---:|---:|');
  for (const r of rows) {
    const c10 =
      r.c10.length === 0 ? '-' : `**${fmt(median(r.c10))}** (${r.c10.map((v) => fmt(v)).join(', ')})`;
    console.log(
      `| ${r.route} | ${fmt(r.single)} | ${fmt(r.bulk)} | ${c10} | ${fmt(r.p50, 1)} / ${fmt(r.p95, 1)} / ${fmt(r.p99, 1)} |`,
    );
  }
}

await main();
