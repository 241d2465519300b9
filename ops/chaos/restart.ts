/**
 * Database restart: while 2 worker processes run CHAOS_JOBS jobs and the shop's revenue
 * projection, and 3 appender processes append batches in their own transactions, first
 * every backend of the scenario's database is terminated (pg_terminate_backend), then the
 * PostgreSQL server itself is restarted (pg_ctlcluster). Nobody restarts the processes:
 * they must reconnect by themselves, and the counts must come out exact.
 *
 * The scenario runs in a database of its own (created and dropped here) so that
 * terminating "every backend" touches no one else's sessions. The server restart does
 * take the server down for a moment for everyone: run it on a machine you own.
 *
 *   npm run chaos:restart
 *   CHAOS_RESTART=0 npm run chaos:restart        # terminate backends only, no server restart
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import {
  databaseUrl,
  envInt,
  makeChecks,
  type Proc,
  setupSchemas,
  sleep,
  spawnAppender,
  spawnWorker,
  stopAll,
  stopOnSignal,
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

const JOBS = envInt('CHAOS_JOBS', 20_000);
const JOB_MS = envInt('CHAOS_JOB_MS', 60);
const APPENDERS = envInt('CHAOS_APPENDERS', 3);
const BATCHES = envInt('CHAOS_BATCHES', 300);
const BATCH_SIZE = envInt('CHAOS_BATCH_SIZE', 200);
const TERMINATE_AT_MS = envInt('CHAOS_TERMINATE_AT_MS', 8_000);
const RESTART_AT_MS = envInt('CHAOS_RESTART_AT_MS', 18_000);
const RESTART = envInt('CHAOS_RESTART', 1) === 1;
const CLUSTER = (process.env.CHAOS_PG_CLUSTER ?? '15 main').split(' ');

const admin = new pg.Pool({ connectionString: databaseUrl(), max: 1 });
admin.on('error', () => {});
const database = `chaos_restart_${randomBytes(3).toString('hex')}`;
await admin.query(`CREATE DATABASE ${database}`);
const url = new URL(databaseUrl());
url.pathname = `/${database}`;
process.env.DATABASE_URL = url.toString();

const checks = makeChecks('chaos:restart');
const procs: Proc[] = [];
stopOnSignal(() => procs);
const serverUp = () =>
  waitFor(
    'the server to accept connections',
    async () => {
      execFileSync('pg_isready', ['-h', url.hostname, '-p', url.port || '5432', '-q']);
      return true;
    },
    120_000,
    200,
  );
const { schema, shop, pool, drop } = await setupSchemas('restart');
const started = Date.now();
console.log(
  `restart: ${JOBS} jobs, ${APPENDERS} appenders x ${BATCHES} batches of ${BATCH_SIZE}, database ${database}, schema ${schema}`,
);
try {
  await createDeferredTable(pool, schema);
  await deferJobs(pool, schema, JOBS);
  const workers = [1, 2].map((n) =>
    spawnWorker(`worker-${n}`, schema, ['--stall-timeout', '10s', '--concurrency', '10'], {
      CHAOS_JOB_MS: String(JOB_MS),
      CHAOS_POOL_MAX: '12',
      CHAOS_SHOP_SCHEMA: shop,
    }),
  );
  const appenders = Array.from({ length: APPENDERS }, (_, i) =>
    spawnAppender(i, schema, {
      CHAOS_BATCHES: String(BATCHES),
      CHAOS_BATCH_SIZE: String(BATCH_SIZE),
      CHAOS_APPEND_PAUSE_MS: '50',
    }),
  );
  procs.push(...workers, ...appenders);

  const progress = async (what: string) => {
    const { rows } = await pool.query(
      `SELECT (SELECT count(*) FROM "${schema}".events)::int AS events,
              (SELECT count(*) FROM "${schema}".results)::int AS results,
              (SELECT coalesce(max(events_processed), 0)::int FROM "${schema}".processors) AS projected`,
    );
    console.log(`  ${Math.round((Date.now() - started) / 1000)} s ${what}: ${JSON.stringify(rows[0])}`);
    return rows[0] as { events: number; results: number; projected: number };
  };

  await sleep(Math.max(0, TERMINATE_AT_MS - (Date.now() - started)));
  await progress('before terminating every backend');
  const { rows: terminated } = await admin.query(
    `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n
     FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`,
    [database],
  );
  console.log(`  terminated ${terminated[0].n} backends of ${database}`);
  await pool.query('SELECT 1').catch(() => undefined); // our own pool lost its connections too
  const afterTerminate = await waitFor('the pool to reconnect', () => progress('after terminating'), 30_000);

  let restartedAt: { events: number; results: number; projected: number } | undefined;
  if (RESTART) {
    await sleep(Math.max(0, RESTART_AT_MS - (Date.now() - started)));
    restartedAt = await progress('before restarting the server');
    const t0 = Date.now();
    execFileSync('pg_ctlcluster', ['--skip-systemctl-redirect', ...CLUSTER, 'restart'], { stdio: 'inherit' });
    await serverUp();
    console.log(`  server restarted and ready in ${Date.now() - t0} ms`);
  }

  const reports = await Promise.all(appenders.map((a) => a.report));
  await waitFor('every job to finish', async () => (await jobsLeft(pool, schema)) === 0, 300_000, 1_000);
  const projection = await checkProjection(pool, schema, shop, 300_000);
  const end = await progress('at the end');
  const alive = workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null).length;
  await stopAll(workers);
  const exits = await Promise.all(workers.map((w) => w.exited));

  const jobs = await countJobs(pool, schema);
  const events = await countEvents(pool, schema, reports);
  const errored = reports.reduce((sum, r) => sum + r.errored.length, 0);
  console.log(
    JSON.stringify(
      {
        jobs,
        events,
        projection,
        appenderErrors: errored,
        seconds: Math.round((Date.now() - started) / 1000),
      },
      null,
      2,
    ),
  );

  checks.check(
    'terminating backends disturbed the run',
    terminated[0].n > 0,
    `${terminated[0].n} backends terminated`,
  );
  checks.check(
    'work went on after the disruptions without restarting any process',
    alive === workers.length &&
      end.results > (restartedAt ?? afterTerminate).results &&
      end.projected > (restartedAt ?? afterTerminate).projected,
    `${alive}/${workers.length} workers alive; results ${(restartedAt ?? afterTerminate).results} -> ${end.results}, projected ${(restartedAt ?? afterTerminate).projected} -> ${end.projected}`,
  );
  checks.check(
    'workers stopped cleanly on SIGTERM',
    exits.every((code) => code === 0),
    `exit codes ${exits.join(', ')}`,
  );
  checks.check(
    'every job has its effect',
    jobs.missing === 0 && jobs.completed === jobs.deferred,
    `${jobs.completed}/${jobs.deferred}`,
  );
  checks.check(
    'nothing left doing or todo',
    jobs.doing === 0 && jobs.todo === 0,
    `doing ${jobs.doing}, todo ${jobs.todo}`,
  );
  checks.check(
    'nothing dead-lettered',
    jobs.failed === 0,
    `${jobs.failed} failed: ${jobs.failedErrors.join(' | ')}`,
  );
  checks.check(
    'chaos-tx effects written exactly once',
    jobs.duplicates.tx === 0,
    `${jobs.duplicates.tx} duplicated`,
  );
  checks.check(
    'chaos-plain duplicates only from re-runs',
    jobs.duplicates.plain <= jobs.jobsRunMoreThanOnce,
    `${jobs.duplicates.plain} duplicated, ${jobs.jobsRunMoreThanOnce} re-run (${jobs.extraRuns} extra runs)`,
  );
  checks.check(
    'appenders saw errors for the transactions that died',
    errored > 0,
    `${errored} batches errored`,
  );
  checks.check(
    'every acknowledged batch stored, whole and once',
    events.ackedMissing === 0,
    `${events.batchesAcked} acked, ${events.ackedMissing} missing or wrong`,
  );
  checks.check('no batch half-written', events.partial === 0, `${events.partial} partial`);
  checks.check(
    'errored batches absent (or whole, when the COMMIT landed but its answer was lost)',
    events.erroredAbsent + events.erroredCommitted === errored,
    `${events.erroredAbsent} absent, ${events.erroredCommitted} committed`,
  );
  checks.check('no unexpected events', events.unexpected === 0, `${events.unexpected} unknown batches`);
  checks.check(
    'projection equals the aggregation of the events table',
    projection.missingOrWrong === 0 && projection.extra === 0 && projection.rows > 0,
    `${projection.rows} customer-days, ${projection.missingOrWrong} missing or wrong, ${projection.extra} extra`,
  );
  checks.check(
    'processor counted every event once',
    projection.eventsProcessed === projection.events,
    `${projection.eventsProcessed} processed of ${projection.events}`,
  );
} catch (error) {
  checks.check('scenario ran to the end', false, String(error));
  for (const proc of procs) console.log(`--- ${proc.name}\n${proc.output().slice(-1500)}`);
} finally {
  await serverUp().catch(() => undefined);
  await stopAll(procs, 5_000);
  checks.finish();
  await drop().catch(() => undefined);
  await admin
    .query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
    .catch((error) => console.error(error));
  await admin.end();
  process.exit();
}
