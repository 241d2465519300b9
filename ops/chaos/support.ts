/**
 * Shared by the chaos scenarios: env-sized settings, schemas of their own, worker and
 * appender processes, RSS and table-bloat sampling, and the checks that decide the exit code.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { createShopTables } from '../../pipelines/shop/tables.js';
import { createApp, createLogger } from '../../src/index.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI = path.join(ROOT, 'src', 'cli', 'main.ts');
export const CHAOS_APP = path.join(ROOT, 'ops', 'chaos', 'app.ts');
export const APPENDER = path.join(ROOT, 'ops', 'chaos', 'appender.ts');

export function databaseUrl(): string {
  return process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
}

/** A positive integer from the environment (sizes, so a quick run is `CHAOS_JOBS=2000 npm run chaos:kill`). */
export function envInt(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 0)
    throw new Error(`${name}=${text} is invalid: expected an integer >= 0`);
  return value;
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function waitFor<T>(what: string, check: () => Promise<T>, timeoutMs: number, everyMs = 250) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

export interface ChaosSchemas {
  schema: string;
  shop: string;
  pool: pg.Pool;
  drop(): Promise<void>;
}

/** A migrated outbatch schema, the shop's schema beside it, and the scenario's own tables. */
export async function setupSchemas(label: string): Promise<ChaosSchemas> {
  const suffix = randomBytes(3).toString('hex');
  const schema = `chaos_${label}_${suffix}`;
  const shop = `${schema}_shop`;
  const app = createApp({ databaseUrl: databaseUrl(), schema, logger: createLogger({ level: 'silent' }) });
  await app.migrate();
  await app.close();
  const pool = new pg.Pool({ connectionString: databaseUrl(), max: 4 });
  pool.on('error', () => {}); // idle connections die in the restart scenario
  await createShopTables(pool, shop);
  // runs: one row per handler start, written outside the job's transaction (survives a kill).
  // results: the job's effect; no unique key, so a duplicate is counted rather than refused.
  await pool.query(`
    CREATE TABLE "${schema}".runs (job_id bigint NOT NULL, pid int NOT NULL, attempt int NOT NULL);
    CREATE TABLE "${schema}".results (job_id bigint NOT NULL, mode text NOT NULL, pid int NOT NULL);
    CREATE INDEX ON "${schema}".runs (job_id);
    CREATE INDEX ON "${schema}".results (job_id);`);
  return {
    schema,
    shop,
    pool,
    async drop() {
      if (process.env.CHAOS_KEEP === '1') {
        console.log(`CHAOS_KEEP=1: schemas ${schema} and ${shop} kept`);
      } else {
        await pool.query(
          `DROP SCHEMA IF EXISTS "${schema}" CASCADE; DROP SCHEMA IF EXISTS "${shop}" CASCADE`,
        );
      }
      await pool.end();
    },
  };
}

export interface Proc {
  child: ChildProcess;
  name: string;
  output(): string;
  exited: Promise<number | null>;
  /** Killed by the scenario (not a failure of its own). */
  killed: boolean;
}

function track(name: string, child: ChildProcess): Proc {
  let output = '';
  const keep = (chunk: Buffer) => {
    output += chunk;
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, name, output: () => output, exited, killed: false };
}

/** `outbatch worker --app ops/chaos/app.ts` (or another worker module) as its own process. */
export function spawnWorker(
  name: string,
  schema: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  appModule = CHAOS_APP,
): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'worker', '--app', appModule, ...args], {
    cwd: ROOT,
    env: { ...process.env, DATABASE_URL: databaseUrl(), OUTBATCH_SCHEMA: schema, LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return track(name, child);
}

export interface AppenderReport {
  appender: number;
  batches: number;
  batchSize: number;
  acked: number;
  /** Batch numbers whose COMMIT (or an append inside) got an error. */
  errored: number[];
}

/** ops/chaos/appender.ts as its own process; resolves with its report (last stdout line). */
export function spawnAppender(
  index: number,
  schema: string,
  env: NodeJS.ProcessEnv,
): Proc & {
  report: Promise<AppenderReport>;
} {
  const child = spawn(process.execPath, ['--import', 'tsx', APPENDER], {
    cwd: ROOT,
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl(),
      OUTBATCH_SCHEMA: schema,
      CHAOS_APPENDER: String(index),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const proc = track(`appender-${index}`, child);
  const report = proc.exited.then((code) => {
    const lines = proc.output().trim().split('\n');
    const last = lines.findLast((line) => line.startsWith('{"appender"'));
    if (code !== 0 || !last)
      throw new Error(`appender ${index} exited ${code}: ${proc.output().slice(-2000)}`);
    return JSON.parse(last) as AppenderReport;
  });
  return Object.assign(proc, { report });
}

/** VmRSS of a live process in MiB (undefined once it is gone). */
export function rssMiB(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Math.round(Number(match[1]) / 102.4) / 10 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Start, warm, peak and last RSS per named process, sampled on a timer. `start` is taken at
 * spawn (before the modules load), so `warm` (the first sample after `warmMs`) is the
 * baseline that growth is measured from.
 */
export function sampleRss(procs: () => Proc[], everyMs = 1_000, warmMs = 30_000) {
  const seen = new Map<
    string,
    { start: number; warm?: number; peak: number; last: number; samples: number; since: number }
  >();
  const sample = () => {
    for (const proc of procs()) {
      const rss = rssMiB(proc.child.pid);
      if (rss === undefined) continue;
      const entry = seen.get(proc.name);
      if (!entry) {
        seen.set(proc.name, { start: rss, peak: rss, last: rss, samples: 1, since: Date.now() });
        continue;
      }
      if (entry.warm === undefined && Date.now() - entry.since >= warmMs) entry.warm = rss;
      entry.peak = Math.max(entry.peak, rss);
      entry.last = rss;
      entry.samples += 1;
    }
  };
  const timer = setInterval(sample, everyMs);
  sample();
  return {
    stop() {
      clearInterval(timer);
      return seen;
    },
  };
}

export interface TableStats {
  table: string;
  live: number;
  dead: number;
  autovacuums: number;
  lastAutovacuum: string | null;
}

export async function tableStats(pool: pg.Pool, schema: string, tables: string[]): Promise<TableStats[]> {
  const { rows } = await pool.query(
    `SELECT relname AS table, n_live_tup::float8 AS live, n_dead_tup::float8 AS dead,
            autovacuum_count::int AS autovacuums, last_autovacuum::text AS "lastAutovacuum"
     FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = ANY ($2) ORDER BY relname`,
    [schema, tables],
  );
  return rows;
}

/** Accumulates named checks; `finish` prints them and sets the exit code. */
export function makeChecks(scenario: string) {
  const results: { name: string; ok: boolean; detail: string }[] = [];
  return {
    check(name: string, ok: boolean, detail = '') {
      results.push({ name, ok, detail });
      console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
    },
    finish(): boolean {
      const failed = results.filter((r) => !r.ok);
      console.log(
        `\n${scenario}: ${results.length - failed.length}/${results.length} checks passed (${new Date().toISOString()})`,
      );
      if (failed.length > 0) process.exitCode = 1;
      return failed.length === 0;
    },
  };
}

/** Stops processes gently (SIGTERM), then for good after `graceMs`. */
export async function stopAll(procs: Proc[], graceMs = 15_000): Promise<void> {
  await Promise.all(
    procs.map(async (proc) => {
      if (proc.child.exitCode !== null || proc.child.signalCode !== null) return;
      proc.child.kill('SIGCONT'); // a paused process would not act on SIGTERM
      proc.child.kill('SIGTERM');
      const timer = setTimeout(() => proc.child.kill('SIGKILL'), graceMs);
      await proc.exited;
      clearTimeout(timer);
    }),
  );
}

/**
 * What the workers logged about recovery: jobs recovered per dead worker's pid (the
 * worker id is `host:pid:hex`), and tx jobs rolled back because they were recovered away.
 */
export function recoveryLog(procs: Proc[]) {
  const recoveredFrom = new Map<number, number>();
  let rolledBackAway = 0;
  for (const proc of procs) {
    for (const line of proc.output().split('\n')) {
      if (!line.startsWith('{')) continue;
      let entry: { deadWorker?: string; msg?: string };
      try {
        entry = JSON.parse(line);
      } catch {
        continue;
      }
      const pid = /:(\d+):[0-9a-f]+$/.exec(entry.deadWorker ?? '')?.[1];
      if (pid) recoveredFrom.set(Number(pid), (recoveredFrom.get(Number(pid)) ?? 0) + 1);
      if (entry.msg?.includes('recovered away from this worker')) rolledBackAway += 1;
    }
  }
  return { recoveredFrom, rolledBackAway };
}

/** Ctrl-C or SIGTERM on a scenario: take its processes down with it instead of orphaning them. */
export function stopOnSignal(procs: () => Proc[]): void {
  const stop = (signal: NodeJS.Signals) => {
    for (const proc of procs()) {
      proc.child.kill('SIGCONT');
      proc.child.kill('SIGKILL');
    }
    console.error(`${signal}: stopped; the scenario's schemas are left behind (names above)`);
    process.exit(130);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
