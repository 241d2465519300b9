/**
 * Soak: CHAOS_EVENTS events appended in batches by CHAOS_APPENDERS appender processes
 * while 2 worker processes run the shop's processors (revenue projection, NDJSON export,
 * customer digests) and CHAOS_JOBS jobs deferred steadily over the run. At the end every
 * count must be exact. RSS of every process (VmRSS) and dead tuples of events and jobs
 * (pg_stat_user_tables) are sampled throughout and reported as start / peak / end.
 *
 *   npm run chaos:soak                                      # 1M events, 100k jobs
 *   CHAOS_EVENTS=100000 CHAOS_JOBS=10000 npm run chaos:soak # quick
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createApp, createLogger } from '../../src/index.js';
import {
  databaseUrl,
  envInt,
  makeChecks,
  type Proc,
  sampleRss,
  setupSchemas,
  sleep,
  spawnAppender,
  spawnWorker,
  stopAll,
  stopOnSignal,
  type TableStats,
  tableStats,
  waitFor,
} from './support.js';
import {
  checkProjection,
  countEvents,
  countJobs,
  createDeferredTable,
  deferJobs,
  jobsLeft,
} from './verify.js';

const EVENTS = envInt('CHAOS_EVENTS', 1_000_000);
const JOBS = envInt('CHAOS_JOBS', 100_000);
const APPENDERS = envInt('CHAOS_APPENDERS', 4);
const BATCH_SIZE = envInt('CHAOS_BATCH_SIZE', 500);
const PAUSE_MS = envInt('CHAOS_APPEND_PAUSE_MS', 250);
const DEFER_EVERY_MS = envInt('CHAOS_DEFER_EVERY_MS', 1_500);
const RSS_GROWTH_MIB = envInt('CHAOS_RSS_GROWTH_MIB', 200);
const BATCHES = Math.ceil(EVENTS / (APPENDERS * BATCH_SIZE));

const { schema, shop, pool, drop } = await setupSchemas('soak');
const exportDir = mkdtempSync(path.join(os.tmpdir(), 'chaos-export-'));
const checks = makeChecks('chaos:soak');
const procs: Proc[] = [];
stopOnSignal(() => procs);
const started = Date.now();
const elapsed = () => `${Math.round((Date.now() - started) / 1000)} s`;
console.log(
  `soak: ${APPENDERS * BATCHES * BATCH_SIZE} events (${APPENDERS} appenders x ${BATCHES} batches of ${BATCH_SIZE}), ${JOBS} jobs, schema ${schema}`,
);
try {
  await createDeferredTable(pool, schema);
  const workers = [1, 2].map((n) =>
    spawnWorker(`worker-${n}`, schema, ['--stall-timeout', '10s', '--concurrency', '10'], {
      CHAOS_POOL_MAX: '12',
      CHAOS_SHOP_SCHEMA: shop,
      CHAOS_EXPORT_DIR: exportDir,
    }),
  );
  const appenders = Array.from({ length: APPENDERS }, (_, i) =>
    spawnAppender(i, schema, {
      CHAOS_BATCHES: String(BATCHES),
      CHAOS_BATCH_SIZE: String(BATCH_SIZE),
      CHAOS_APPEND_PAUSE_MS: String(PAUSE_MS),
    }),
  );
  procs.push(...workers, ...appenders);
  const self = { child: { pid: process.pid }, name: 'orchestrator' } as unknown as Proc;
  const rss = sampleRss(() => [...procs, self], 2_000);

  const tables = ['events', 'jobs'];
  const bloat = { start: await tableStats(pool, schema, tables), peak: new Map<string, TableStats>() };
  const sampleBloat = async () => {
    for (const row of await tableStats(pool, schema, tables)) {
      const peak = bloat.peak.get(row.table);
      if (!peak || row.dead > peak.dead) bloat.peak.set(row.table, row);
    }
  };
  const bloatTimer = setInterval(() => void sampleBloat().catch(() => undefined), 5_000);

  // Jobs arrive steadily over the run, as in a service, rather than as one backlog.
  const deferring = (async () => {
    for (let done = 0; done < JOBS; done += 1_000) {
      await deferJobs(pool, schema, Math.min(1_000, JOBS - done));
      await sleep(DEFER_EVERY_MS);
    }
  })();
  const ticker = setInterval(async () => {
    const { rows } = await pool
      .query(
        `SELECT (SELECT count(*) FROM "${schema}".events)::int AS events,
                (SELECT count(*) FROM "${schema}".results)::int AS jobs_done,
                (SELECT coalesce(max(events_processed) FILTER (WHERE name = 'revenue-by-customer-day'), 0)::int
                 FROM "${schema}".processors) AS projected`,
      )
      .catch(() => ({ rows: [{}] }));
    console.log(`  ${elapsed()}: ${JSON.stringify(rows[0])}`);
  }, 15_000);

  const reports = await Promise.all(appenders.map((a) => a.report));
  await deferring;
  console.log(`  ${elapsed()}: appenders and deferring done`);
  await waitFor('every job to finish', async () => (await jobsLeft(pool, schema)) === 0, 600_000, 1_000);
  const projection = await checkProjection(pool, schema, shop, 600_000);
  const app = createApp({ databaseUrl: databaseUrl(), schema, logger: createLogger({ level: 'silent' }) });
  await waitFor(
    'every processor to catch up',
    async () => {
      const statuses = await app.processors.status();
      return statuses.every((s) => s.lagEvents === 0 && s.state !== 'running');
    },
    300_000,
    1_000,
  );
  const statuses = await app.processors.status();
  await app.close();
  clearInterval(ticker);
  clearInterval(bloatTimer);
  await sampleBloat();
  const seconds = Math.round((Date.now() - started) / 1000);
  const rssSeen = rss.stop();
  const bloatEnd = await tableStats(pool, schema, tables);
  await stopAll(workers);
  const exits = await Promise.all(workers.map((w) => w.exited));

  const jobs = await countJobs(pool, schema);
  const events = await countEvents(pool, schema, reports);
  const exported = readdirSync(exportDir).flatMap((file) =>
    readFileSync(path.join(exportDir, file), 'utf8').split('\n').filter(Boolean),
  );
  const exportedPositions = new Set(exported.map((line) => JSON.parse(line).position as string));
  const { rows: digestRows } = await pool.query(`SELECT count(*)::int AS n FROM "${shop}".digests`);

  console.log(`\n${events.stored} events and ${jobs.deferred} jobs in ${seconds} s`);
  console.log('RSS MiB (at spawn / after 30 s / peak / end):');
  for (const [name, r] of rssSeen)
    console.log(`  ${name}: ${r.start} / ${r.warm ?? '-'} / ${r.peak} / ${r.last} (${r.samples} samples)`);
  console.log('Tables (live / dead tuples, autovacuum runs, last autovacuum):');
  for (const [label, rows] of [
    ['start', bloat.start],
    ['peak', [...bloat.peak.values()]],
    ['end', bloatEnd],
  ] as const) {
    for (const t of rows)
      console.log(
        `  ${label} ${t.table}: ${t.live} / ${t.dead}, ${t.autovacuums} autovacuums, last ${t.lastAutovacuum ?? 'never'}`,
      );
  }
  console.log(
    JSON.stringify(
      {
        jobs,
        events,
        projection,
        exported: exported.length,
        digests: digestRows[0].n,
        processors: statuses.map((s) => ({
          name: s.name,
          state: s.state,
          processed: s.eventsProcessed,
          lag: s.lagEvents,
        })),
      },
      null,
      2,
    ),
  );

  checks.check(
    'every event appended, whole and once',
    events.ackedMissing === 0 &&
      events.partial === 0 &&
      events.unexpected === 0 &&
      events.stored === APPENDERS * BATCHES * BATCH_SIZE,
    `${events.stored} stored`,
  );
  checks.check(
    'no append failed',
    reports.every((r) => r.errored.length === 0),
    `${reports.reduce((n, r) => n + r.errored.length, 0)} errored batches`,
  );
  checks.check(
    'every job done exactly once',
    jobs.completed === jobs.deferred &&
      jobs.deferred === JOBS &&
      jobs.extraRuns === 0 &&
      jobs.duplicates.tx + jobs.duplicates.plain === 0,
    `${jobs.completed}/${jobs.deferred}, ${jobs.extraRuns} extra runs`,
  );
  checks.check(
    'nothing left doing, todo or failed',
    jobs.doing + jobs.todo + jobs.failed === 0,
    `doing ${jobs.doing}, todo ${jobs.todo}, failed ${jobs.failed}`,
  );
  checks.check(
    'projection equals the aggregation',
    projection.missingOrWrong === 0 &&
      projection.extra === 0 &&
      projection.eventsProcessed === projection.events,
    `${projection.rows} customer-days, ${projection.eventsProcessed}/${projection.events} processed`,
  );
  checks.check(
    'export holds every event once',
    exported.length === events.stored && exportedPositions.size === exported.length,
    `${exported.length} lines, ${exportedPositions.size} distinct`,
  );
  checks.check(
    'no processor failed',
    statuses.every((s) => s.state !== 'failed'),
    statuses.map((s) => `${s.name}: ${s.state}`).join(', '),
  );
  checks.check(
    'workers stopped cleanly on SIGTERM',
    exits.every((code) => code === 0),
    `exit codes ${exits.join(', ')}`,
  );
  const grew = [...rssSeen].filter(([, r]) => r.peak - (r.warm ?? r.start) > RSS_GROWTH_MIB);
  checks.check(
    `no process grew more than ${RSS_GROWTH_MIB} MiB after its first 30 s`,
    grew.length === 0,
    grew.map(([name, r]) => `${name} ${r.warm ?? r.start} -> ${r.peak}`).join(', '),
  );
  const jobsEnd = bloatEnd.find((t) => t.table === 'jobs');
  const jobsStart = bloat.start.find((t) => t.table === 'jobs');
  const { rows: autovacuum } = await pool.query(`SELECT current_setting('autovacuum') AS setting`);
  if (autovacuum[0].setting !== 'on') {
    console.log(
      `note autovacuum is ${autovacuum[0].setting} on this server: dead tuples in jobs peaked at ${bloat.peak.get('jobs')?.dead}, ${jobsEnd?.dead} at the end (reclaimed by page pruning only); not checked`,
    );
  } else
    checks.check(
      'autovacuum kept up with the jobs table',
      (jobsEnd?.autovacuums ?? 0) > (jobsStart?.autovacuums ?? 0),
      `autovacuum ran ${(jobsEnd?.autovacuums ?? 0) - (jobsStart?.autovacuums ?? 0)} times; dead at end ${jobsEnd?.dead}`,
    );
  console.log(`\nsoak took ${seconds} s`);
} catch (error) {
  checks.check('scenario ran to the end', false, String(error));
  for (const proc of procs) console.log(`--- ${proc.name}\n${proc.output().slice(-1500)}`);
} finally {
  await stopAll(procs, 5_000);
  checks.finish();
  rmSync(exportDir, { recursive: true, force: true });
  await drop();
  process.exit();
}
