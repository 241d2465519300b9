/**
 * Dashboard benchmark: a million jobs (a mix of every state), 100k events and a lagging
 * processor in a scratch schema; times the page's API calls, /metrics, and the page
 * load in headless chromium (median of N), then drops the schema.
 *
 *   DATABASE_URL=postgres://... npx tsx ops/bench/dashboard.ts [--jobs 1000000] [--runs 15]
 *
 * Figures go to ops/bench/RESULTS.md ("Dashboard") by hand.
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { chromium } from 'playwright-core';
import { startAdminServer } from '../../src/admin/server.js';
import { createApp } from '../../src/app.js';
import { CHROMIUM_ARGS } from '../../test/admin/chromium.js';

const { values: flags } = parseArgs({
  options: { jobs: { type: 'string', default: '1000000' }, runs: { type: 'string', default: '15' } },
});
const JOBS = Number(flags.jobs);
const RUNS = Number(flags.runs);
const url = process.env.DATABASE_URL;
if (!url) throw new Error('set DATABASE_URL to a PostgreSQL the benchmark may write a scratch schema into');

const schema = `dash_bench_${randomBytes(3).toString('hex')}`;
const s = `"${schema}"`;
const app = createApp({ databaseUrl: url, schema });
const pool = new pg.Pool({ connectionString: url, max: 2 });

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
async function time(label: string, fn: () => Promise<unknown>, runs = RUNS): Promise<void> {
  await fn(); // warm: plans cached, pages in shared buffers
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    await fn();
    ms.push(performance.now() - start);
  }
  process.stdout.write(
    `${label.padEnd(44)} median ${median(ms).toFixed(1).padStart(7)} ms   max ${Math.max(...ms)
      .toFixed(1)
      .padStart(7)} ms\n`,
  );
}

try {
  await app.migrate();
  const seedStart = performance.now();
  // Mix per 1000 jobs: 600 kept succeeded, 150 todo due, 50 scheduled, 100 cancelled,
  // 80 failed, 15 doing on a live worker, 5 doing on a dead one (dirty).
  await pool.query(
    `INSERT INTO ${s}.workers (id, host, pid, concurrency, stall_timeout_ms, last_seen_at)
     VALUES ('live', 'bench', 1, 10, 30000, now() + interval '1 hour'), ('dead', 'bench', 2, 10, 30000, now() - interval '1 hour')`,
  );
  await pool.query(
    `INSERT INTO ${s}.jobs (task, queue, args, status, run_at, attempts, max_attempts, last_error, worker_id, keep_until, created_at)
     SELECT 'task-' || (i % 7), 'queue-' || (i % 3), jsonb_build_object('i', i),
            CASE WHEN m < 600 THEN 'succeeded' WHEN m < 800 THEN 'todo' WHEN m < 900 THEN 'cancelled'
                 WHEN m < 980 THEN 'failed' ELSE 'doing' END,
            CASE WHEN m BETWEEN 750 AND 799 THEN now() + interval '1 day' ELSE now() - interval '1 minute' END,
            CASE WHEN m BETWEEN 900 AND 979 THEN 5 ELSE 0 END, 5,
            CASE WHEN m BETWEEN 900 AND 979
              THEN jsonb_build_object('message', 'boom ' || i, 'stack', 'Error: boom ' || i || E'\\n    at handler (app.js:1:1)') END,
            CASE WHEN m >= 995 THEN 'dead' WHEN m >= 980 THEN 'live' END,
            CASE WHEN m < 600 THEN now() + interval '1 day' END,
            now() - (${JOBS} - i) * interval '10 ms'
     FROM generate_series(1, $1::int) AS i, LATERAL (SELECT i % 1000 AS m) x`,
    [JOBS],
  );
  await pool.query(
    `INSERT INTO ${s}.task_stats (task, minute, succeeded, retried, failed, duration_ms_sum, duration_ms_max)
     SELECT 'task-' || t, date_trunc('minute', now()) - m * interval '1 minute', 1000, 10, 1, 40000, 90
     FROM generate_series(0, 59) m, generate_series(0, 6) t`,
  );
  await pool.query(
    `INSERT INTO ${s}.events (stream, stream_version, type, data)
     SELECT 's-' || i, 1, 'Bench', '{}' FROM generate_series(1, 100000) i`,
  );
  await pool.query(`INSERT INTO ${s}.processors (name, version, active) VALUES ('lagging', 1, true)`);
  await pool.query(`ANALYZE ${s}.jobs`);
  await pool.query(`ANALYZE ${s}.events`);
  process.stdout.write(
    `seeded ${JOBS} jobs + 100000 events in ${((performance.now() - seedStart) / 1000).toFixed(1)} s\n`,
  );

  const server = await startAdminServer({ app, port: 0 });
  const get = (path: string) => async () => {
    const response = await fetch(`${server.url}${path}`);
    if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
    return response.text();
  };
  const metricsText = await get('/metrics')();
  if (!/^outbatch_workers_alive 1$/m.test(metricsText))
    throw new Error('/metrics has no database gauges: a scrape failed');
  const failedPage = JSON.parse(await get('/api/jobs?state=failed&limit=50')()) as { next: string };
  const deep = Math.floor(JOBS / 2);
  try {
    await time('GET /api/overview', get('/api/overview'));
    await time('GET /api/counts', get('/api/counts'));
    await time('GET /api/jobs?state=failed&limit=50', get('/api/jobs?state=failed&limit=50'));
    await time(
      'GET /api/jobs?state=failed (2nd page)',
      get(`/api/jobs?state=failed&limit=50&before=${failedPage.next}`),
    );
    await time(
      `GET /api/jobs?state=todo&before=${deep}`,
      get(`/api/jobs?state=todo&limit=200&before=${deep}`),
    );
    await time('GET /api/jobs?state=dirty&limit=50', get('/api/jobs?state=dirty&limit=50'));
    await time(
      'GET /api/jobs?state=scheduled&queue=queue-1',
      get('/api/jobs?state=scheduled&queue=queue-1&limit=50'),
    );
    await time('GET /api/jobs?state=failed&task=task-3', get('/api/jobs?state=failed&task=task-3&limit=50'));
    await time('GET /api/processors (100k events of lag)', get('/api/processors'));
    await time('GET /metrics', get('/metrics'));
    const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
    try {
      const page = await browser.newPage();
      await time(
        'page load (navigate until the lists render)',
        async () => {
          await page.goto(server.url);
          await page.locator('#failed-jobs tr[data-job-id]').first().waitFor();
          await page.locator('#browse tr[data-job-id]').first().waitFor();
        },
        Math.min(RUNS, 7),
      );
    } finally {
      await browser.close();
    }
  } finally {
    await server.close();
  }
} finally {
  await app.close();
  await pool.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
  await pool.end();
}
