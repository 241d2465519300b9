/**
 * The scale suite: burn-downs of 20k, 200k, 1M and 5M queued no-op jobs, at concurrency 10
 * and 1, outbatch beside graphile-worker tuned, on one PostgreSQL. Each (size, system) is a
 * run of `ops/bench/jobs.ts --phases throughput` in a process of its own (a fresh heap per
 * size, so one size's garbage does not tax the next), sizes in turn, systems interleaved.
 *
 *   DATABASE_URL=postgres://... npm run bench -- --suite scale [--sizes 20000,200000,1000000,5000000]
 *     [--repeat 1] [--peer-repeat <repeat>] [--peers pinned|current] [--label <name>] [--max-seconds 300]
 *
 * Writes ops/bench/results/scale-<label>.json (every run's figures, the medians, the ratios,
 * how flat each curve is) and ops/bench/results/scale-<label>.svg (throughput against backlog,
 * per system and concurrency), and prints a table; RESULTS.md embeds the SVG by hand. The
 * label defaults to the server's major version and whether autovacuum is on. A burn-down still
 * running after --max-seconds is cut there and its rate taken over the jobs started by then
 * (marked `*` in the table, `capped` in the JSON): the backlog is still about its size.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { renderChart, type Series, shortNumber } from './chart.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const { values: flags } = parseArgs({
  options: {
    sizes: { type: 'string', default: '20000,200000,1000000,5000000' },
    repeat: { type: 'string', default: '1' },
    'peer-repeat': { type: 'string' },
    peers: { type: 'string', default: 'pinned' },
    label: { type: 'string' },
    'max-seconds': { type: 'string', default: '300' },
  },
});
const url = process.env.DATABASE_URL;
if (!url) {
  process.stderr.write('set DATABASE_URL (the benchmark never starts the embedded server)\n');
  process.exit(2);
}
const sizes = flags.sizes.split(',').map((size) => {
  const n = Number(size);
  if (!Number.isSafeInteger(n) || n < 1000)
    throw new Error(`--sizes: "${size}" is not a whole number of at least 1000`);
  return n;
});
const repeat = Number(flags.repeat);
if (!Number.isSafeInteger(repeat) || repeat < 1)
  throw new Error(`--repeat: "${flags.repeat}" is not a whole number >= 1`);
// The peer's runs are the long ones (graphile-worker at 5M is cut at --max-seconds): its
// figure only sets the ratio, so it may be run fewer times than outbatch's curve.
const peerRepeat = Number(flags['peer-repeat'] ?? repeat);
if (!Number.isSafeInteger(peerRepeat) || peerRepeat < 1)
  throw new Error(`--peer-repeat: "${flags['peer-repeat']}" is not a whole number >= 1`);
if (flags.peers !== 'pinned' && flags.peers !== 'current') {
  throw new Error(`--peers must be "pinned" or "current", not "${flags.peers}"`);
}

const systems = [
  { key: 'outbatch', only: 'outbatch', label: 'outbatch' },
  { key: 'graphile', only: '(tuned)', label: 'graphile-worker tuned' },
] as const;

interface Run {
  size: number;
  system: string;
  /** Jobs/s from the worker's start to the last handler start (start-up included). */
  c10: number[];
  c1: number[];
  /** Jobs/s from the first handler start to the last: the burn-down alone. */
  c10Backlog: number[];
  c1Backlog: number[];
  /** Worker start to first handler start (ms). */
  c10Start: number[];
  c1Start: number[];
  c10Rss: number[];
  c1Rss: number[];
  c10Capped: boolean[];
  c1Capped: boolean[];
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

const admin = new pg.Client({ connectionString: url });
await admin.connect();
const server = (await admin.query('SHOW server_version')).rows[0].server_version as string;
const autovacuum = (await admin.query('SHOW autovacuum')).rows[0].autovacuum as string;
await admin.end();
const label = flags.label ?? `pg${server.split('.')[0]}-autovacuum-${autovacuum}`;
if (!/^[A-Za-z0-9_.-]+$/.test(label)) throw new Error(`--label "${label}": letters, digits, . _ - only`);

const runs: Run[] = [];
const steps = sizes.length * systems.length;
let step = 0;
for (const size of sizes) {
  for (const system of systems) {
    step += 1;
    const started = Date.now();
    process.stderr.write(`[${step}/${steps}] ${shortNumber(size)} jobs, ${system.label}, c=10 and c=1 ...`);
    const json = path.join(os.tmpdir(), `outbatch-scale-${process.pid}-${step}.json`);
    const result = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        path.join(here, 'jobs.ts'),
        '--phases',
        'throughput',
        '--jobs',
        String(size),
        '--repeat',
        String(system.key === 'outbatch' ? repeat : peerRepeat),
        '--only',
        system.only,
        '--peers',
        flags.peers,
        '--json',
        json,
        '--max-seconds',
        flags['max-seconds'],
      ],
      { stdio: ['ignore', 'ignore', 'inherit'], env: process.env },
    );
    if (result.status !== 0)
      throw new Error(`jobs.ts for ${size} jobs (${system.label}) exited ${result.status}`);
    const figures = JSON.parse(fs.readFileSync(json, 'utf8')) as {
      rows: {
        system: string;
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
      }[];
    };
    fs.rmSync(json);
    const row = figures.rows.find((r) => r.system.includes(system.only));
    if (!row?.c10 || !row.c1 || !row.c10Backlog || !row.c1Backlog || !row.c10Start || !row.c1Start)
      throw new Error(`jobs.ts for ${size} jobs gave no figures for ${system.label}`);
    runs.push({
      size,
      system: system.key,
      c10: row.c10,
      c1: row.c1,
      c10Backlog: row.c10Backlog,
      c1Backlog: row.c1Backlog,
      c10Start: row.c10Start,
      c1Start: row.c1Start,
      c10Rss: row.c10Rss ?? [],
      c1Rss: row.c1Rss ?? [],
      c10Capped: row.c10Capped ?? [],
      c1Capped: row.c1Capped ?? [],
    });
    process.stderr.write(
      ` ${Math.round(median(row.c10Backlog))} / ${Math.round(median(row.c1Backlog))} jobs/s (${Math.round((Date.now() - started) / 1000)} s)\n`,
    );
  }
}

const at = (system: string, size: number) => runs.find((r) => r.system === system && r.size === size)!;
/**
 * The curves: the burn-down alone (first handler start to last; the headline, what a running
 * worker shows when a burst arrives) and from the worker's start (a process's start-up, about
 * 0.1 s, included: a fifth of a 20k burn-down, nothing of a 5M one).
 */
type Curve = 'c10Backlog' | 'c1Backlog' | 'c10' | 'c1';
/** Each size's median against the best size's, per curve: 1.0 is the best, the target is >= 0.85. */
function flatness(system: string, key: Curve): Record<string, number> {
  const medians = sizes.map((size) => median(at(system, size)[key]));
  const best = Math.max(...medians);
  return Object.fromEntries(sizes.map((size, i) => [size, Number((medians[i]! / best).toFixed(2))]));
}
const ratio = (size: number, key: Curve) =>
  Number((median(at('outbatch', size)[key]) / median(at('graphile', size)[key])).toFixed(2));
const summary = {
  postgres: server,
  autovacuum,
  node: process.version,
  peers: flags.peers,
  sizes,
  repeat,
  peerRepeat,
  runs,
  /** outbatch / graphile-worker per size, burn-down alone (c10, c1) and start-up included. */
  ratios: Object.fromEntries(
    sizes.map((size) => [
      size,
      {
        c10: ratio(size, 'c10Backlog'),
        c1: ratio(size, 'c1Backlog'),
        c10FromStart: ratio(size, 'c10'),
        c1FromStart: ratio(size, 'c1'),
      },
    ]),
  ),
  flatness: Object.fromEntries(
    systems.map((s) => [
      s.key,
      {
        c10: flatness(s.key, 'c10Backlog'),
        c1: flatness(s.key, 'c1Backlog'),
        c10FromStart: flatness(s.key, 'c10'),
        c1FromStart: flatness(s.key, 'c1'),
      },
    ]),
  ),
};
const dir = path.join(here, 'results');
fs.mkdirSync(dir, { recursive: true });
fs.writeFileSync(path.join(dir, `scale-${label}.json`), `${JSON.stringify(summary, null, 2)}\n`);
const series: Series[] = systems.flatMap((s) =>
  (['c10Backlog', 'c1Backlog'] as const).map((key) => ({
    name: `${s.label} c=${key === 'c10Backlog' ? 10 : 1}`,
    dashed: s.key !== 'outbatch',
    points: sizes.map((size) => ({ x: size, y: median(at(s.key, size)[key]) })),
  })),
);
fs.writeFileSync(
  path.join(dir, `scale-${label}.svg`),
  renderChart({
    title: `Burn-down throughput by backlog (PostgreSQL ${server.split(' ')[0]}, autovacuum ${autovacuum})`,
    xLabel: 'queued no-op jobs at the start (log scale)',
    yLabel: 'jobs/s, first to last handler start',
    logX: true,
    series,
  }),
);

console.log(
  `PostgreSQL ${server}, autovacuum ${autovacuum}, Node ${process.version}, ${repeat} run(s) per outbatch point, ${peerRepeat} per peer point (medians)\n`,
);
console.log(
  '| backlog | outbatch c=10 | graphile tuned c=10 | ratio | outbatch c=1 | graphile tuned c=1 | ratio | from start c=10 / c=1 (outbatch, ratio) | start-up c=10 / c=1 (ms) | outbatch peak RSS (MB) |',
);
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const size of sizes) {
  const o = at('outbatch', size);
  const g = at('graphile', size);
  const rss = Math.max(...o.c10Rss, ...o.c1Rss);
  const capped = (run: Run, key: 'c10' | 'c1') => (run[`${key}Capped`].some(Boolean) ? '*' : '');
  const cell = (run: Run, key: 'c10' | 'c1') =>
    `${Math.round(median(run[`${key}Backlog`]))}${capped(run, key)}`;
  const r = summary.ratios[size]!;
  console.log(
    `| ${shortNumber(size)} | ${cell(o, 'c10')} | ${cell(g, 'c10')} | ${r.c10.toFixed(2)}x | ${cell(o, 'c1')} | ${cell(g, 'c1')} | ${r.c1.toFixed(2)}x | ${Math.round(median(o.c10))} / ${Math.round(median(o.c1))} (${r.c10FromStart.toFixed(2)}x / ${r.c1FromStart.toFixed(2)}x) | ${Math.round(median(o.c10Start))} / ${Math.round(median(o.c1Start))} | ${Number.isFinite(rss) ? rss : '-'} |`,
  );
}
const f = summary.flatness.outbatch!;
console.log(
  `\nflatness (each size / the best size; target >= 0.85), burn-down alone: outbatch c=10 ${JSON.stringify(f.c10)}, c=1 ${JSON.stringify(f.c1)}`,
);
console.log(
  `from the worker's start: c=10 ${JSON.stringify(f.c10FromStart)}, c=1 ${JSON.stringify(f.c1FromStart)}`,
);
console.log(`* cut at ${flags['max-seconds']} s: the rate over the jobs started by then`);
console.log(`wrote ops/bench/results/scale-${label}.json and scale-${label}.svg`);
