/**
 * Throughput at a limit (docs/limits.md "What it costs"): one worker (this process) at
 * concurrency 10 works off N queued no-op jobs, in a schema of its own, dropped afterwards:
 * without limits, with a queue concurrency of 5, with a group concurrency of 1 across 100
 * groups, and with a rate limit of N/2 per second (so the second half waits for the window).
 *
 *   DATABASE_URL=postgres://... npx tsx ops/bench/limits.ts [--jobs 5000]
 */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createApp } from '../../src/app.js';
import type { QueueLimitsOptions } from '../../src/jobs/queueControl.js';

const { values: flags } = parseArgs({ options: { jobs: { type: 'string', default: '5000' } } });
const JOBS = Number(flags.jobs);
const url = process.env.DATABASE_URL;
if (!url) throw new Error('set DATABASE_URL to the PostgreSQL to benchmark against');

async function run(label: string, limits: QueueLimitsOptions | null, groups: number): Promise<void> {
  const schema = `bench_limits_${process.pid}`;
  const admin = new pg.Pool({ connectionString: url, max: 1 });
  await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  const app = createApp({ databaseUrl: url, schema });
  try {
    await app.migrate();
    let done = 0;
    let finished: () => void = () => {};
    const allDone = new Promise<void>((resolve) => {
      finished = resolve;
    });
    const task = app.task('noop', { queue: 'bench' }, async () => {
      done += 1;
      if (done === JOBS) finished();
    });
    for (let i = 0; i < JOBS; i += 1_000) {
      await task.deferMany(
        Array.from({ length: Math.min(1_000, JOBS - i) }, (_, n) => ({
          args: {},
          group: groups > 0 ? `g${(i + n) % groups}` : undefined,
        })),
      );
    }
    if (limits) await app.queues.configure('bench', limits);
    const controller = new AbortController();
    const started = performance.now();
    const running = app.run({ concurrency: 10, signal: controller.signal, heartbeatInterval: 200 });
    await allDone;
    const seconds = (performance.now() - started) / 1_000;
    controller.abort();
    await running;
    process.stdout.write(`| ${label} | ${Math.round(JOBS / seconds)} | ${seconds.toFixed(2)} |\n`);
  } finally {
    await app.close();
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await admin.end();
  }
}

process.stdout.write(
  `${JOBS} no-op jobs, one worker at concurrency 10\n\n| limits | jobs/s | seconds |\n|---|---:|---:|\n`,
);
await run('none', null, 0);
await run('concurrency 5', { concurrency: 5 }, 0);
await run('group concurrency 1, 100 groups', { groupConcurrency: 1 }, 100);
await run(`rate ${JOBS / 2} per 2 s`, { rate: { max: JOBS / 2, per: { seconds: 2 } } }, 0);
