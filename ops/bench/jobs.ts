/**
 * Job queue benchmark: outbatch (default settings) side by side with graphile-worker
 * (default, and tuned: localQueue 500, completeJobBatchDelay 0) and pg-boss (batchSize 100),
 * on the same PostgreSQL, each in a schema of its own, dropped afterwards.
 *
 *   DATABASE_URL=postgres://... npx tsx ops/bench/jobs.ts [--jobs 20000] [--latency-jobs 500] [--single 2000]
 *     [--repeat 3] [--only <part of a system's name>[,<another>]] [--peers pinned|current] [--json <file>]
 *     [--phases all|throughput]
 *
 * `--peers current` compares with graphile-worker 0.18 and pg-boss 12 (Node >= 22); the
 * default, `pinned`, with 0.17.3 and 10.4.2. `ops/bench/peers.ts` runs both, each on its
 * Node, and prints the ratios side by side. `--json` also writes the figures to a file.
 * `--phases throughput` runs only the burn-downs (what `ops/bench/scale.ts` asks for at
 * each backlog size); `--only outbatch,tuned` keeps the systems whose name contains either.
 *
 * Measures: enqueue one at a time (sequential awaits) and in bulk (1,000 per call);
 * a raw single-row INSERT as the floor; processing N queued no-op jobs with one worker
 * (this process) at concurrency 10 and 1, from the worker's start and from its first job (the
 * backlog alone, start-up excluded); idle latency defer -> handler start for jobs
 * deferred 10 ms apart. Figures go to ops/bench/RESULTS.md by hand.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Runner, WorkerUtils } from 'graphile-worker';
import pg from 'pg';
import { createApp } from '../../src/app.js';
import { renderChart } from './chart.js';

const { values: flags } = parseArgs({
  options: {
    jobs: { type: 'string', default: '20000' },
    'latency-jobs': { type: 'string', default: '500' },
    single: { type: 'string', default: '2000' },
    only: { type: 'string' },
    repeat: { type: 'string', default: '3' },
    peers: { type: 'string', default: 'pinned' },
    json: { type: 'string' },
    phases: { type: 'string', default: 'all' },
    'max-seconds': { type: 'string' },
  },
});
if (flags.phases !== 'all' && flags.phases !== 'throughput') {
  throw new Error(`--phases must be "all" or "throughput", not "${flags.phases}"`);
}
const ALL_PHASES = flags.phases === 'all';
if (flags.peers !== 'pinned' && flags.peers !== 'current') {
  throw new Error(`--peers must be "pinned" or "current", not "${flags.peers}"`);
}
/**
 * The competitors' releases. `pinned`: graphile-worker 0.17.3 and pg-boss 10.4.2, the newest
 * that run on Node 20. `current`: graphile-worker 0.18 and pg-boss 12 (devDependencies
 * `graphile-worker-current`, `pg-boss-current`), which need Node >= 22.
 */
const PEERS = flags.peers;
const graphileLib = (
  PEERS === 'current' ? await import('graphile-worker-current') : await import('graphile-worker')
) as typeof import('graphile-worker');
const bossLib = PEERS === 'current' ? await import('pg-boss-current') : await import('pg-boss');
const versions = {
  graphile: PEERS === 'current' ? '0.18.0' : '0.17.3',
  boss: PEERS === 'current' ? '12.38.0' : '10.4.2',
};
const JOBS = Number(flags.jobs);
const LATENCY_JOBS = Number(flags['latency-jobs']);
const SINGLE = Number(flags.single);
const REPEAT = Number(flags.repeat);
const BULK_CHUNK = 1_000;
/**
 * A burn-down is cut after this long and its rate taken over the jobs started by then (the
 * backlog still about its starting size). Default: none for the everyday run, 5 minutes for
 * the scale suite's (`--phases throughput`), where a peer at c=1 would take most of an hour
 * over 5M jobs.
 */
const MAX_MS =
  flags['max-seconds'] !== undefined
    ? Number(flags['max-seconds']) * 1000
    : ALL_PHASES
      ? Number.POSITIVE_INFINITY
      : 300_000;
if (!(MAX_MS > 0)) throw new Error(`--max-seconds must be a number above 0, not "${flags['max-seconds']}"`);
const url = process.env.DATABASE_URL;
if (!url) throw new Error('set DATABASE_URL to the PostgreSQL to benchmark against');

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Worker {
  stop(): Promise<void>;
}

/** What each contender provides; `onJob` is called with the job's args at handler start. */
interface System {
  name: string;
  setup(): Promise<void>;
  enqueueOne(args: { t: number }): Promise<void>;
  enqueueMany(args: { t: number }[]): Promise<void>;
  startWorker(concurrency: number, onJob: (args: { t: number }) => void): Promise<Worker>;
  purge(): Promise<void>;
  cleanup(): Promise<void>;
}

const admin = new pg.Pool({ connectionString: url, max: 2 });

/**
 * After a purge, as autovacuum would soon do in production: this server runs with
 * autovacuum off, and the dead index entries of 100k jobs made every later claim (of every
 * system) walk past them.
 */
async function vacuum(table: string): Promise<void> {
  await admin.query(`VACUUM ${table}`);
}

function outbatch(): System {
  const schema = 'bench_outbatch';
  let onJob: (args: { t: number }) => void = () => {};
  const app = createApp({ databaseUrl: url, schema });
  const task = app.task('noop', {}, async (args: { t: number }) => onJob(args));
  return {
    name: 'outbatch',
    async setup() {
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await app.migrate();
    },
    async enqueueOne(args) {
      await task.defer(args);
    },
    async enqueueMany(args) {
      await task.deferMany(args.map((a) => ({ args: a })));
    },
    async startWorker(concurrency, handler) {
      onJob = handler;
      const controller = new AbortController();
      const running = app.run({ concurrency, signal: controller.signal });
      return {
        async stop() {
          controller.abort();
          await running;
        },
      };
    },
    async purge() {
      await admin.query(`DELETE FROM ${schema}.jobs`);
      await vacuum(`${schema}.jobs`);
    },
    async cleanup() {
      await app.close();
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    },
  };
}

function graphile(name: string, tuned: boolean): System {
  const schema = 'bench_graphile';
  let utils: WorkerUtils;
  let onJob: (args: { t: number }) => void = () => {};
  const logger = new graphileLib.Logger(() => () => {});
  return {
    name,
    async setup() {
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      utils = await graphileLib.makeWorkerUtils({ connectionString: url, schema, logger });
      await utils.migrate();
    },
    async enqueueOne(args) {
      await utils.addJob('noop', args);
    },
    async enqueueMany(args) {
      await utils.addJobs(args.map((payload) => ({ identifier: 'noop', payload })));
    },
    async startWorker(concurrency, handler) {
      onJob = handler;
      const runner: Runner = await graphileLib.run({
        connectionString: url,
        schema,
        concurrency,
        noHandleSignals: true,
        logger,
        taskList: {
          noop: async (payload) => {
            onJob(payload as { t: number });
          },
        },
        preset: tuned
          ? { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } }
          : {},
      });
      return {
        async stop() {
          await runner.stop();
        },
      };
    },
    async purge() {
      await admin.query(`DELETE FROM ${schema}._private_jobs`);
      await vacuum(`${schema}._private_jobs`);
    },
    async cleanup() {
      await utils.release();
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    },
  };
}

/**
 * pg-boss 10 (pinned) has no LISTEN/NOTIFY and no concurrency option: one work() call per
 * unit of concurrency, polling every 0.5 s (its minimum). pg-boss 12 (current) runs with its
 * LISTEN/NOTIFY (`useListenNotify`, queue `notify`), `localConcurrency`, and fetches again at
 * once while batches come back full (`burstWhenBatchFull`).
 */
function pgBoss(): System {
  const schema = 'bench_pgboss';
  const queue = 'noop';
  const current = PEERS === 'current';
  // biome-ignore lint/suspicious/noExplicitAny: two majors with different typings, used alike
  const Boss: any = current
    ? (bossLib as { PgBoss: unknown }).PgBoss
    : (bossLib as { default: unknown }).default;
  const boss = new Boss({
    connectionString: url,
    schema,
    supervise: false,
    schedule: false,
    ...(current && { useListenNotify: true }),
  });
  boss.on('error', (error: unknown) => console.error('pg-boss error', error));
  return {
    name: `pg-boss ${versions.boss} (batchSize 100${current ? ', notify' : ''})`,
    async setup() {
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await boss.start();
      await boss.createQueue(queue, current ? { notify: true } : undefined);
    },
    async enqueueOne(args) {
      await boss.send(queue, args);
    },
    async enqueueMany(args) {
      if (current)
        await boss.insert(
          queue,
          args.map((data) => ({ data })),
        );
      else await boss.insert(args.map((data) => ({ name: queue, data })));
    },
    async startWorker(concurrency, handler) {
      const work = async (jobs: { data: { t: number } }[]) => {
        for (const job of jobs) handler(job.data);
      };
      if (current) {
        await boss.work(
          queue,
          {
            batchSize: 100,
            localConcurrency: concurrency,
            pollingIntervalSeconds: 0.5,
            burstWhenBatchFull: true,
          },
          work,
        );
        return {
          async stop() {
            await boss.offWork(queue);
          },
        };
      }
      const ids: string[] = [];
      for (let i = 0; i < concurrency; i += 1) {
        ids.push(await boss.work(queue, { batchSize: 100, pollingIntervalSeconds: 0.5 }, work));
      }
      return {
        async stop() {
          for (const id of ids) await boss.offWork({ id });
        },
      };
    },
    async purge() {
      await admin.query(`DELETE FROM ${schema}.job`);
      await vacuum(`${schema}.job`);
    },
    async cleanup() {
      await boss.stop({ graceful: false, wait: true });
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    },
  };
}

/** The floor: a plain INSERT of one row into a table shaped like a job table, no trigger, one index. */
function rawInsert(): System {
  const pool = new pg.Pool({ connectionString: url, max: 10 });
  return {
    name: 'raw single-row INSERT',
    async setup() {
      await admin.query('DROP SCHEMA IF EXISTS bench_raw CASCADE');
      await admin.query('CREATE SCHEMA bench_raw');
      await admin.query(
        `CREATE TABLE bench_raw.jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, task text NOT NULL,
           args jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`,
      );
    },
    async enqueueOne(args) {
      await pool.query('INSERT INTO bench_raw.jobs (task, args) VALUES ($1, $2)', [
        'noop',
        JSON.stringify(args),
      ]);
    },
    async enqueueMany() {},
    async startWorker() {
      throw new Error('no worker');
    },
    async purge() {
      await admin.query('DELETE FROM bench_raw.jobs');
      await vacuum(`bench_raw.jobs`);
    },
    async cleanup() {
      await pool.end();
      await admin.query('DROP SCHEMA bench_raw CASCADE');
    },
  };
}

/**
 * One at a time, `callers` loops in parallel, interleaved across systems in `ROUNDS`
 * rounds so a noisy neighbour or a checkpoint hits every system alike.
 */
async function enqueueSingle(systems: System[], callers: number): Promise<Map<System, number>> {
  const rounds = 5;
  const perRound = Math.ceil(SINGLE / rounds / callers);
  const spent = new Map<System, number>(systems.map((s) => [s, 0]));
  for (let round = 0; round < rounds; round += 1) {
    for (const system of systems) {
      const started = now();
      await Promise.all(
        Array.from({ length: callers }, async () => {
          for (let i = 0; i < perRound; i += 1) await system.enqueueOne({ t: now() });
        }),
      );
      spent.set(system, spent.get(system)! + (now() - started));
      await system.purge();
    }
  }
  return new Map(systems.map((s) => [s, (rounds * perRound * callers) / (spent.get(s)! / 1000)]));
}

async function enqueueBulk(system: System, count: number): Promise<number> {
  const started = now();
  for (let i = 0; i < count; i += BULK_CHUNK) {
    await system.enqueueMany(Array.from({ length: Math.min(BULK_CHUNK, count - i) }, () => ({ t: 0 })));
  }
  return count / ((now() - started) / 1000);
}

interface Throughput {
  /** Jobs/s from the worker's start to the last handler start. */
  rate: number;
  /** Jobs/s from the first handler start to the last: the backlog alone, start-up excluded. */
  backlog: number;
  /** Worker start to the first handler start (ms): connecting, registering, the first claim. */
  startMs: number;
  /** The benchmark process's peak resident set size during the burn-down (MB), sampled every 250 ms. */
  rssMb: number;
  /** Cut at MAX_MS before the last job started: the rates are over the jobs started by then. */
  capped: boolean;
}

/** Jobs already queued; from worker start (and from the first job) to the last handler start. */
async function throughput(system: System, concurrency: number, jobs = JOBS): Promise<Throughput> {
  await system.purge();
  await enqueueBulk(system, jobs);
  let seen = 0;
  let first = 0;
  let finished: () => void = () => {};
  const all = new Promise<void>((resolve) => {
    finished = resolve;
  });
  let rss = process.memoryUsage.rss();
  const sampler = setInterval(() => {
    rss = Math.max(rss, process.memoryUsage.rss());
  }, 250);
  const started = now();
  const worker = await system.startWorker(concurrency, () => {
    seen += 1;
    if (seen === 1) first = now();
    if (seen === jobs) finished();
  });
  let cap: NodeJS.Timeout | undefined;
  const capped = await Promise.race([
    all.then(() => false),
    new Promise<boolean>((resolve) => {
      if (Number.isFinite(MAX_MS)) cap = setTimeout(() => resolve(true), MAX_MS);
    }),
  ]);
  clearTimeout(cap);
  const last = now();
  const ran = seen;
  clearInterval(sampler);
  await worker.stop();
  await system.purge();
  return {
    rate: ran / ((last - started) / 1000),
    backlog: (ran - 1) / ((last - first) / 1000),
    startMs: first - started,
    rssMb: Math.round(Math.max(rss, process.memoryUsage.rss()) / 1e6),
    capped,
  };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Percentile ranks the latency chart draws (the table keeps p50, p95, p99). */
const CURVE = [50, 75, 90, 95, 99];

async function latency(
  system: System,
): Promise<{ p50: number; p95: number; p99: number; curve: { x: number; y: number }[] }> {
  await system.purge();
  const samples: number[] = [];
  const worker = await system.startWorker(10, (args) => {
    samples.push(now() - args.t);
  });
  await sleep(1_000); // idle
  for (let i = 0; i < LATENCY_JOBS; i += 1) {
    await system.enqueueOne({ t: now() });
    await sleep(10);
  }
  const deadline = Date.now() + 30_000;
  while (samples.length < LATENCY_JOBS && Date.now() < deadline) await sleep(20);
  await worker.stop();
  await system.purge();
  const sorted = samples.sort((a, b) => a - b);
  return {
    p50: percentile(sorted, 50),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
    curve: CURVE.map((x) => ({ x, y: Number(percentile(sorted, x).toFixed(2)) })),
  };
}

interface Row {
  system: string;
  single?: number;
  single10?: number;
  bulk?: number;
  c10?: number[];
  c1?: number[];
  c10Backlog?: number[];
  c1Backlog?: number[];
  c10Start?: number[];
  c1Start?: number[];
  c10Rss?: number[];
  c1Rss?: number[];
  c10Capped?: boolean[];
  c1Capped?: boolean[];
  p50?: number;
  p95?: number;
  p99?: number;
  curve?: { x: number; y: number }[];
}

const fmt = (n: number | undefined, digits = 0) => (n === undefined ? '-' : n.toFixed(digits));
const median = (values: number[] | undefined) =>
  values === undefined ? undefined : [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const runs = (values: number[] | undefined) =>
  values === undefined
    ? '-'
    : `**${fmt(median(values))}**${values.length > 1 ? ` (${values.map((v) => fmt(v)).join(', ')})` : ''}`;

async function main() {
  const raw = rawInsert();
  const ours = outbatch();
  const gDefault = graphile(`graphile-worker ${versions.graphile} (default)`, false);
  const gTuned = graphile(`graphile-worker ${versions.graphile} (tuned)`, true);
  const boss = pgBoss();
  const wanted = flags.only?.split(',').filter(Boolean);
  const all = [ours, gDefault, gTuned, boss].filter(
    (s) => !wanted || wanted.some((part) => s.name.includes(part)),
  );
  const rows = new Map<System, Row>([raw, ...all].map((s) => [s, { system: s.name }]));
  const row = (s: System) => rows.get(s)!;
  for (const system of [raw, ...all]) await system.setup();

  // graphile-worker tuned differs only in its runner: enqueueing is measured once.
  const enqueuers = [raw, ...all.filter((s) => s !== gTuned)];
  if (ALL_PHASES) {
    process.stderr.write('enqueue one at a time\n');
    for (const [system, rate] of await enqueueSingle(enqueuers, 1)) row(system).single = rate;
    process.stderr.write('enqueue one at a time, 10 callers\n');
    for (const [system, rate] of await enqueueSingle(enqueuers, 10)) row(system).single10 = rate;
    for (const system of enqueuers.filter((s) => s !== raw)) {
      process.stderr.write(`${system.name}: bulk enqueue\n`);
      row(system).bulk = await enqueueBulk(system, JOBS);
      await system.purge();
    }
  }
  if (!ALL_PHASES) {
    // The burn-downs alone (the scale suite): each system first works off 2,000 jobs
    // untimed, so no timed run pays for this process's cold start (JIT, first connections)
    // and the first timed run is not the only one that does. The everyday run has its
    // enqueue phases before.
    for (const system of all) {
      process.stderr.write(`${system.name}: warm-up, 2000 jobs\n`);
      await throughput(system, 10, 2_000);
    }
  }
  // The pair the target compares runs REPEAT times, interleaved; the others once.
  for (const concurrency of [10, 1]) {
    const key = concurrency === 10 ? 'c10' : 'c1';
    for (let round = 0; round < REPEAT; round += 1) {
      for (const system of all) {
        if (round > 0 && system !== ours && system !== gTuned) continue;
        process.stderr.write(
          `${system.name}: ${JOBS} jobs at concurrency ${concurrency} (round ${round + 1})\n`,
        );
        const measured = await throughput(system, concurrency);
        const entry = row(system);
        entry[key] = [...(entry[key] ?? []), measured.rate];
        entry[`${key}Backlog`] = [...(entry[`${key}Backlog`] ?? []), measured.backlog];
        entry[`${key}Start`] = [...(entry[`${key}Start`] ?? []), measured.startMs];
        entry[`${key}Rss`] = [...(entry[`${key}Rss`] ?? []), measured.rssMb];
        entry[`${key}Capped`] = [...(entry[`${key}Capped`] ?? []), measured.capped];
      }
    }
  }
  for (const system of ALL_PHASES ? all : []) {
    process.stderr.write(`${system.name}: latency\n`);
    Object.assign(row(system), await latency(system));
  }
  for (const system of [raw, ...all]) await system.cleanup();
  const pgVersion = (await admin.query('SHOW server_version')).rows[0].server_version;
  await admin.end();

  console.log(
    `PostgreSQL ${pgVersion}, Node ${process.version}, ${JOBS} jobs per throughput run, ${LATENCY_JOBS} latency samples, ${SINGLE} single enqueues\n`,
  );
  console.log(
    '| system | enqueue 1-by-1 (jobs/s) | 1-by-1, 10 callers (jobs/s) | bulk, 1000/call (jobs/s) | process c=10 (jobs/s) | process c=1 (jobs/s) | backlog c=10 / c=1 (jobs/s) | start c=10 / c=1 (ms) | latency p50 / p95 / p99 (ms) |',
  );
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows.values()) {
    const lat = r.p50 === undefined ? '-' : `${fmt(r.p50, 1)} / ${fmt(r.p95, 1)} / ${fmt(r.p99, 1)}`;
    console.log(
      `| ${r.system} | ${fmt(r.single)} | ${fmt(r.single10)} | ${fmt(r.bulk)} | ${runs(r.c10)} | ${runs(r.c1)} | ${fmt(median(r.c10Backlog))} / ${fmt(median(r.c1Backlog))} | ${fmt(median(r.c10Start))} / ${fmt(median(r.c1Start))} | ${lat} |`,
    );
  }
  const curves = [...rows.values()].filter((entry) => entry.curve);
  if (curves.length > 0) {
    // The latency chart RESULTS.md embeds, and its figures.
    const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'results');
    fs.mkdirSync(dir, { recursive: true });
    const major = String(pgVersion).split('.')[0];
    const name = `jobs-latency-pg${major}`;
    fs.writeFileSync(
      path.join(dir, `${name}.json`),
      `${JSON.stringify({ postgres: pgVersion, node: process.version, peers: PEERS, samples: LATENCY_JOBS, curves: curves.map((c) => ({ system: c.system, curve: c.curve })) }, null, 2)}\n`,
    );
    fs.writeFileSync(
      path.join(dir, `${name}.svg`),
      renderChart({
        title: `Idle latency, defer to handler start (PostgreSQL ${major}, ${LATENCY_JOBS} jobs 10 ms apart)`,
        xLabel: 'percentile',
        yLabel: 'ms',
        series: curves.map((c) => ({ name: c.system, dashed: c !== row(ours), points: c.curve! })),
      }),
    );
    process.stderr.write(`wrote ops/bench/results/${name}.json and ${name}.svg\n`);
  }
  // outbatch may be left out (--only): its ratios are then undefined.
  const o: Row = rows.get(ours) ?? { system: ours.name };
  const t = rows.get(gTuned);
  const d = rows.get(gDefault);
  const r = row(raw);
  if (flags.json) {
    const ratio = (a: number[] | undefined, b: number[] | undefined) =>
      a && b ? median(a)! / median(b)! : undefined;
    const boss = [...rows.values()].find((entry) => entry.system.startsWith('pg-boss'));
    fs.writeFileSync(
      flags.json,
      JSON.stringify(
        {
          postgres: pgVersion,
          node: process.version,
          peers: PEERS,
          versions,
          jobs: JOBS,
          rows: [...rows.values()],
          ratios: {
            c10VsTunedGraphile: ratio(o.c10, t?.c10),
            c1VsTunedGraphile: ratio(o.c1, t?.c1),
            c10VsPgBoss: ratio(o.c10, boss?.c10),
            c1VsPgBoss: ratio(o.c1, boss?.c1),
          },
        },
        null,
        2,
      ),
    );
  }
  if (t && d && ALL_PHASES) {
    console.log('\nratios (median of runs; target in brackets):');
    console.log(
      `- throughput c=10 vs tuned graphile-worker: ${(median(o.c10)! / median(t.c10)!).toFixed(2)}x [>= 1.5x]`,
    );
    console.log(
      `- throughput c=1 vs tuned graphile-worker: ${(median(o.c1)! / median(t.c1)!).toFixed(2)}x [>= 1.5x]`,
    );
    console.log(
      `- backlog alone (first to last handler start) vs tuned graphile-worker: c=10 ${(median(o.c10Backlog)! / median(t.c10Backlog)!).toFixed(2)}x, c=1 ${(median(o.c1Backlog)! / median(t.c1Backlog)!).toFixed(2)}x`,
    );
    console.log(
      `- p50 latency: ${fmt(o.p50, 1)} ms vs graphile-worker default ${fmt(d.p50, 1)} ms, tuned ${fmt(t.p50, 1)} ms [<=]`,
    );
    console.log(
      `- single enqueue vs graphile-worker: ${(o.single! / d.single!).toFixed(2)}x; with 10 callers ${(o.single10! / d.single10!).toFixed(2)}x [>= 3x]`,
    );
    console.log(
      `- single enqueue vs raw INSERT: ${((100 * o.single!) / r.single!).toFixed(0)}%; with 10 callers ${((100 * o.single10!) / r.single10!).toFixed(0)}% [>= 80%]`,
    );
  }
}

await main();
