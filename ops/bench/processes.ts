/**
 * Several worker processes on one backlog: 1, 2 and 4 Node processes, each one worker
 * (`app.run({ concurrency })`), burn down N queued no-op jobs in a schema of their own
 * (dropped afterwards). Per process count it reports:
 *
 * - jobs/s from the moment every process is ready (app made, tasks registered) until the
 *   last job has started, and that every job ran exactly once (the handlers' counts add up
 *   to N and no row is left);
 * - the claims: round trips, jobs per claim, mean claim time, and short claims (fewer jobs
 *   than asked for while others were still queued: rows other workers had locked were
 *   skipped, the cost of SKIP LOCKED between processes), read from the claim statement's
 *   own calls in each process;
 * - where the time went: CPU seconds of the worker processes, of every PostgreSQL process
 *   (backends, WAL writer, checkpointer), and what was left of the machine's cores.
 *
 *   DATABASE_URL=postgres://... npx tsx ops/bench/processes.ts [--jobs 200000]
 *     [--processes 1,2,4] [--concurrency 10] [--repeat 2]
 *
 * Reads /proc for PostgreSQL's CPU time: run it on the database's machine.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createApp } from '../../src/app.js';

const { values: flags } = parseArgs({
  options: {
    jobs: { type: 'string', default: '200000' },
    processes: { type: 'string', default: '1,2,4' },
    concurrency: { type: 'string', default: '10' },
    repeat: { type: 'string', default: '2' },
    child: { type: 'string' },
  },
});
const url = process.env.DATABASE_URL;
if (!url) {
  process.stderr.write('set DATABASE_URL to the PostgreSQL to benchmark against\n');
  process.exit(2);
}
const whole = (text: string, what: string, min: number) => {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min)
    throw new Error(`--${what}: "${text}" is not a whole number >= ${min}`);
  return n;
};
const JOBS = whole(flags.jobs, 'jobs', 1000);
const CONCURRENCY = whole(flags.concurrency, 'concurrency', 1);
const REPEAT = whole(flags.repeat, 'repeat', 1);
const COUNTS = flags.processes.split(',').map((p) => whole(p, 'processes', 1));
const TASK = 'noop';

interface ClaimStats {
  claims: number;
  claimed: number;
  short: number;
  ms: number;
}
interface ChildReport extends ClaimStats {
  handled: number;
  cpuMs: number;
}
type FromChild = { kind: 'ready' } | { kind: 'progress'; handled: number } | ({ kind: 'done' } & ChildReport);

/**
 * Counts the claim statement's calls on every pg client of this process: its text starts
 * with `WITH picked AS` (src/jobs/claim.ts) and its second parameter is the limit asked for.
 */
function watchClaims(): ClaimStats {
  const stats: ClaimStats = { claims: 0, claimed: 0, short: 0, ms: 0 };
  const original = pg.Client.prototype.query as (...args: unknown[]) => unknown;
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    const config = args[0] as { text?: string; values?: unknown[] } | string;
    const text = typeof config === 'string' ? config : config?.text;
    if (typeof text !== 'string' || !text.startsWith('WITH picked AS')) return original.apply(this, args);
    const values = typeof config === 'string' ? (args[1] as unknown[]) : config.values;
    const limit = Number(values?.[1]);
    const started = performance.now();
    const count = (rowCount: number | null) => {
      stats.claims += 1;
      stats.claimed += rowCount ?? 0;
      stats.ms += performance.now() - started;
      if ((rowCount ?? 0) < limit) stats.short += 1;
    };
    // pg-pool passes a callback (and gets no promise back); a client used directly returns one.
    const last = args.length - 1;
    const callback = args[last];
    if (typeof callback === 'function') {
      args[last] = (error: unknown, result: { rowCount: number | null }) => {
        if (!error) count(result.rowCount);
        return (callback as (e: unknown, r: unknown) => unknown)(error, result);
      };
      return original.apply(this, args);
    }
    const result = original.apply(this, args);
    if (result instanceof Promise) {
      void result.then(
        (r: { rowCount: number | null }) => count(r.rowCount),
        () => {},
      );
    }
    return result;
  } as typeof pg.Client.prototype.query;
  return stats;
}

async function child(schema: string): Promise<void> {
  const send = (message: FromChild) => process.send?.(message);
  const stats = watchClaims();
  const app = createApp({ databaseUrl: url, schema });
  let handled = 0;
  app.task(TASK, {}, async () => {
    handled += 1;
  });
  const controller = new AbortController();
  let running: Promise<void> | undefined;
  let cpuAtStart = process.cpuUsage();
  process.on('message', (message: string) => {
    if (message === 'go') {
      cpuAtStart = process.cpuUsage();
      running = app.run({ concurrency: CONCURRENCY, signal: controller.signal });
    } else if (message === 'stop') {
      void (async () => {
        controller.abort();
        await running;
        const cpu = process.cpuUsage(cpuAtStart);
        send({ kind: 'done', handled, cpuMs: (cpu.user + cpu.system) / 1000, ...stats });
        await app.close();
        process.disconnect?.();
      })();
    }
  });
  const progress = setInterval(() => send({ kind: 'progress', handled }), 50);
  progress.unref();
  send({ kind: 'ready' });
}

/** CPU milliseconds of every process named postgres on this machine (/proc). */
function postgresCpuMs(): number {
  const tick = 1000 / 100; // USER_HZ is 100 on Linux
  let total = 0;
  for (const pid of fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      if (name !== 'postgres' && !name.startsWith('postgres')) continue;
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      total += (Number(fields[11]) + Number(fields[12])) * tick; // utime, stime
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

interface Measured {
  processes: number;
  rate: number;
  claims: number;
  perClaim: number;
  claimMs: number;
  short: number;
  nodeCpuS: number;
  pgCpuS: number;
  wallS: number;
}

async function measure(processes: number): Promise<Measured> {
  const schema = `bench_processes_${process.pid}`;
  const admin = new pg.Pool({ connectionString: url, max: 1 });
  await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  const app = createApp({ databaseUrl: url, schema });
  await app.migrate();
  const task = app.task(TASK, {}, async () => {});
  for (let i = 0; i < JOBS; i += 1_000) {
    await task.deferMany(Array.from({ length: Math.min(1_000, JOBS - i) }, () => ({ args: {} })));
  }
  await app.close();
  const children: ChildProcess[] = [];
  const handled = new Map<ChildProcess, number>();
  const reports = new Map<ChildProcess, ChildReport>();
  let readyCount = 0;
  let allReady: () => void = () => {};
  const ready = new Promise<void>((resolve) => {
    allReady = resolve;
  });
  let allStarted: () => void = () => {};
  const started = new Promise<void>((resolve) => {
    allStarted = resolve;
  });
  let allDone: () => void = () => {};
  const done = new Promise<void>((resolve) => {
    allDone = resolve;
  });
  for (let i = 0; i < processes; i += 1) {
    const proc = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        fileURLToPath(import.meta.url),
        '--child',
        schema,
        '--concurrency',
        String(CONCURRENCY),
      ],
      { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: process.env },
    );
    children.push(proc);
    proc.on('message', (message: FromChild) => {
      if (message.kind === 'ready' && ++readyCount === processes) allReady();
      if (message.kind === 'progress') {
        handled.set(proc, message.handled);
        const sum = [...handled.values()].reduce((a, b) => a + b, 0);
        if (sum >= JOBS) allStarted();
      }
      if (message.kind === 'done') {
        reports.set(proc, message);
        if (reports.size === processes) allDone();
      }
    });
  }
  await ready;
  const pgBefore = postgresCpuMs();
  const t0 = performance.now();
  for (const proc of children) proc.send('go');
  await started;
  const wallS = (performance.now() - t0) / 1000;
  const pgCpuS = (postgresCpuMs() - pgBefore) / 1000;
  for (const proc of children) proc.send('stop');
  await done;
  const all = [...reports.values()];
  const sum = (key: keyof ChildReport) => all.reduce((a, r) => a + r[key], 0);
  const left = await admin.query(`SELECT count(*)::int AS n FROM ${schema}.jobs`);
  await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await admin.end();
  if (sum('handled') !== JOBS || left.rows[0].n !== 0) {
    throw new Error(
      `${processes} process(es): handlers ran ${sum('handled')} times for ${JOBS} jobs, ${left.rows[0].n} rows left`,
    );
  }
  return {
    processes,
    rate: JOBS / wallS,
    claims: sum('claims'),
    perClaim: sum('claimed') / Math.max(1, sum('claims')),
    claimMs: sum('ms') / Math.max(1, sum('claims')),
    short: sum('short'),
    nodeCpuS: sum('cpuMs') / 1000,
    pgCpuS,
    wallS,
  };
}

if (flags.child) {
  await child(flags.child);
} else {
  const results: Measured[] = [];
  for (let round = 1; round <= REPEAT; round += 1) {
    for (const processes of COUNTS) {
      process.stderr.write(`[round ${round}/${REPEAT}] ${processes} worker process(es), ${JOBS} jobs ...`);
      const m = await measure(processes);
      results.push(m);
      process.stderr.write(` ${Math.round(m.rate)} jobs/s\n`);
    }
  }
  const cores = os.availableParallelism?.() ?? os.cpus().length;
  console.log(
    `\n${JOBS} queued no-op jobs, each process one worker at concurrency ${CONCURRENCY}, ${cores} cores, Node ${process.version}\n`,
  );
  console.log(
    '| processes | jobs/s | claims | jobs per claim | mean claim (ms) | short claims | Node CPU (s) | PostgreSQL CPU (s) | wall (s) | cores idle |',
  );
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const m of results) {
    const idle = Math.max(0, 1 - (m.nodeCpuS + m.pgCpuS) / (m.wallS * cores));
    console.log(
      `| ${m.processes} | ${Math.round(m.rate)} | ${m.claims} | ${m.perClaim.toFixed(0)} | ${m.claimMs.toFixed(1)} | ${m.short} | ${m.nodeCpuS.toFixed(1)} | ${m.pgCpuS.toFixed(1)} | ${m.wallS.toFixed(1)} | ${(100 * idle).toFixed(0)}% |`,
    );
  }
}
