/**
 * Fault test: worker and appender processes talk to PostgreSQL through the fault proxy
 * (test/faultProxy.ts), which every ~CHAOS_FAULT_EVERY client messages cuts a random
 * connection: before the server sees a message ('cut'), after the server ran it but before
 * its reply ('lose-reply': a committed claim, completion or COMMIT the client never hears
 * of), or half-way through a reply ('cut-mid-reply'). Meanwhile poison handlers throw what a
 * careless writer cannot store or describe, and pairs of jobs with one queueing lock fail
 * at the same moment. The scenario's own checks go direct, not through the proxy.
 *
 * Then, counted: every job ended as its policy says (chaos-tx/plain done, poison tasks
 * dead-lettered after their attempts with readable text, each locked job done or
 * superseded), nothing left `todo` or `doing`, `ctx.tx` effects once, every acknowledged
 * append stored once and whole, every stored event processed once, no worker died.
 *
 *   npm run chaos:faults                                               # quick, ~1-2 min
 *   CHAOS_JOBS=50000 CHAOS_EVENTS=200000 CHAOS_POISON=200 CHAOS_PAIRS=200 npm run chaos:faults   # full
 */

import { createApp, createLogger } from '../../src/index.js';
import { startFaultProxy } from '../../test/faultProxy.js';
import {
  databaseUrl,
  envInt,
  makeChecks,
  type Proc,
  ROOT,
  setupSchemas,
  sleep,
  spawnAppender,
  spawnWorker,
  stopAll,
  stopOnSignal,
  waitFor,
} from './support.js';
import {
  countEvents,
  countJobs,
  countKeptJobs,
  countLockedPairs,
  countProcessed,
  createDeferredTable,
  deferJobs,
} from './verify.js';

const JOBS = envInt('CHAOS_JOBS', 2_000);
const EVENTS = envInt('CHAOS_EVENTS', 8_000);
const APPENDERS = envInt('CHAOS_APPENDERS', 2);
const BATCH_SIZE = envInt('CHAOS_BATCH_SIZE', 100);
const POISON = envInt('CHAOS_POISON', 10); // per poison task, but see CHAOS_HUGE
const HUGE = envInt('CHAOS_HUGE', 2); // poison-huge jobs: a few MB each, per attempt
const PAIRS = envInt('CHAOS_PAIRS', 20);
const FAULT_EVERY = envInt('CHAOS_FAULT_EVERY', 300);
const WORKERS = envInt('CHAOS_WORKERS', 2);
const LATE_WORKERS = envInt('CHAOS_LATE_WORKERS', 1); // started half-way through the faults
const CONCURRENCY = envInt('CHAOS_CONCURRENCY', 10);
const STALL_MS = envInt('CHAOS_STALL_MS', 5_000);
const JOB_MS = envInt('CHAOS_JOB_MS', 30);
const WAVES = Math.max(1, envInt('CHAOS_WAVES', 5));
const MIN_FAULT_S = envInt('CHAOS_MIN_FAULT_S', 20);
const TIMEOUT_S = envInt('CHAOS_TIMEOUT_S', 900); // of faults; then the drain
const STUCK_S = envInt('CHAOS_STUCK_S', 30); // no job finished this long: stop the faults
const DRAIN_S = envInt('CHAOS_DRAIN_S', 60);

// CHAOS_POISON_TASKS=poison-nul,poison-huge runs only those (to tell one poison's harm from another's).
const POISON_TASKS = (
  process.env.CHAOS_POISON_TASKS || 'poison-bigint,poison-huge,poison-nul,poison-surrogate'
)
  .split(',')
  .sort();
const KEPT_TASKS = [...POISON_TASKS, 'locked-pair'];
/**
 * Besides the random faults, each wave arms one fault at each of these moments, the ones a
 * worker must get right: a claim, completion or failure the server committed but whose
 * reply was lost, a claim reply cut half-way, a COMMIT (of a `ctx.tx` job, an append or a
 * processor page) whose reply was lost.
 */
const TARGETS: { name: string; match: string | RegExp; action: 'lose-reply' | 'cut-mid-reply' }[] = [
  { name: 'claim', match: 'outbatch_claim_', action: 'lose-reply' },
  { name: 'claim', match: 'outbatch_claim_', action: 'cut-mid-reply' },
  { name: 'complete', match: 'outbatch_complete_', action: 'lose-reply' },
  { name: 'fail', match: 'outbatch_fail_', action: 'lose-reply' },
  { name: 'COMMIT', match: /^COMMIT/, action: 'lose-reply' },
];
const targeted: Record<string, { armed: number; fired: number }> = {};
const WORKER_APP = `${ROOT}/ops/chaos/faults-app.ts`;

const { schema, pool, drop } = await setupSchemas('faults');
const checks = makeChecks('chaos:faults');
const proxy = await startFaultProxy(databaseUrl());
const lateProxy = await startFaultProxy(databaseUrl());
let lateCut = ''; // the late worker's first statement, which was cut
const direct = createApp({ databaseUrl: databaseUrl(), schema, logger: createLogger({ level: 'silent' }) });
const everyone: Proc[] = [];
stopOnSignal(() => everyone);
const started = Date.now();
const seconds = () => Math.round((Date.now() - started) / 1000);
console.log(
  `fault test: ${JOBS} jobs, ${POISON} x 3 poison tasks + ${HUGE} huge, ${PAIRS} locked pairs, ${EVENTS} events ` +
    `(${APPENDERS} appenders, batches of ${BATCH_SIZE}), ${WORKERS} workers x ${CONCURRENCY}, ` +
    `a fault every ~${FAULT_EVERY} messages, schema ${schema}`,
);

/** Tasks' jobs still waiting or running (all the scenario's tasks). */
const unfinished = async () => {
  const { rows } = await pool.query(
    `SELECT count(*)::int AS n FROM "${schema}".jobs
     WHERE status IN ('todo', 'doing') AND (task LIKE 'chaos-%' OR task = ANY ($1))`,
    [KEPT_TASKS],
  );
  return rows[0].n as number;
};

/** Prints where the run is; returns the jobs left. */
const progress = async () => {
  const left = await unfinished();
  const { rows } = await pool.query(
    `SELECT (SELECT count(*) FROM "${schema}".events)::int AS events,
            (SELECT count(*) FROM "${schema}".processed)::int AS processed`,
  );
  console.log(
    `  ${seconds()} s: ${left} jobs left, ${rows[0].events} events, ${rows[0].processed} processed, ` +
      `${deaths.length} worker deaths; faults ${JSON.stringify(proxy.injected)}`,
  );
  return left;
};

/** A dead worker is replaced (and counted as a failure): the run goes on so the counts show the rest. */
const deaths: string[] = [];
let serial = 0;
const spawnOne = (url = proxy.url) =>
  spawnWorker(
    `worker-${++serial}`,
    schema,
    ['--stall-timeout', `${STALL_MS}ms`, '--concurrency', String(CONCURRENCY), '--shutdown-timeout', '5s'],
    { DATABASE_URL: url, CHAOS_JOB_MS: String(JOB_MS), CHAOS_POOL_MAX: String(CONCURRENCY + 2) },
    WORKER_APP,
  );
const workers: Proc[] = [];
const replaceDead = () => {
  for (const [i, proc] of workers.entries()) {
    if (proc.child.exitCode === null && proc.child.signalCode === null) continue;
    deaths.push(
      `${proc.name} exited ${proc.child.exitCode ?? proc.child.signalCode}: ${proc.output().slice(-3_000)}`,
    );
    workers[i] = spawnOne(); // through the main proxy, even if it was a late one
    everyone.push(workers[i]!);
  }
};

try {
  await pool.query(`
    CREATE TABLE "${schema}".processed (position bigint NOT NULL, pid int NOT NULL);
    CREATE INDEX ON "${schema}".processed (position);`);
  await createDeferredTable(pool, schema);
  await deferJobs(pool, schema, JOBS);
  workers.push(...Array.from({ length: WORKERS }, () => spawnOne()));
  everyone.push(...workers);
  // Poison and locked jobs are deferred by name: they take the retry budget the workers registered.
  await waitFor(
    'the workers to register their tasks',
    async () => {
      const { rows } = await pool.query(
        `SELECT count(*)::int AS n FROM "${schema}".tasks WHERE name = ANY ($1)`,
        [KEPT_TASKS],
      );
      return rows[0].n === KEPT_TASKS.length;
    },
    60_000,
  );

  // CHAOS_FAULT_EVERY=0 runs without random faults (a baseline for the timings).
  if (FAULT_EVERY > 0)
    proxy.chaos({ everyMessages: FAULT_EVERY, actions: ['cut', 'lose-reply', 'cut-mid-reply'] });
  const faultsFrom = seconds();
  const batches = Math.ceil(EVENTS / APPENDERS / BATCH_SIZE);
  const appenders = Array.from({ length: APPENDERS }, (_, i) =>
    spawnAppender(i, schema, {
      DATABASE_URL: proxy.url,
      CHAOS_BATCHES: String(batches),
      CHAOS_BATCH_SIZE: String(BATCH_SIZE),
      CHAOS_APPEND_PAUSE_MS: '50',
    }),
  );
  everyone.push(...appenders);
  let appended = false;
  const reports = Promise.all(appenders.map((a) => a.report)).finally(() => {
    appended = true;
  });
  reports.catch(() => {}); // awaited below

  // Poison and locked jobs arrive in waves while the faults go on.
  const share = (total: number, wave: number) =>
    Math.floor((total * (wave + 1)) / WAVES) - Math.floor((total * wave) / WAVES);
  let deferredKept = 0;
  for (let wave = 0; wave < WAVES; wave++) {
    for (const target of FAULT_EVERY > 0 ? TARGETS : []) {
      const key = `${target.action} ${target.name}`;
      targeted[key] ??= { armed: 0, fired: 0 };
      targeted[key].armed += 1;
      void proxy.addRule({ match: target.match, action: target.action }).fired.then(() => {
        targeted[key]!.fired += 1;
      });
    }
    const counts: Record<string, number> = {
      'poison-nul': share(POISON, wave),
      'poison-bigint': share(POISON, wave),
      'poison-surrogate': share(POISON, wave),
      'poison-huge': share(HUGE, wave),
    };
    for (const [task, n] of Object.entries(counts)) {
      if (!POISON_TASKS.includes(task)) continue;
      for (let i = 0; i < n; i++) await direct.defer(task, { n: deferredKept++ });
    }
    for (let i = 0; i < share(PAIRS, wave); i++) {
      const pair = deferredKept++;
      await direct.defer('locked-pair', { pair, role: 'first' }, { queueingLock: `pair-${pair}` });
    }
    // A worker that starts while the faults go on (a deploy or a restart during a network
    // incident) must come up by itself, not exit on its first lost connection: through a
    // proxy of its own, its first statements are cut, then it gets the same random faults.
    if (wave === Math.floor(WAVES / 2) && LATE_WORKERS > 0) {
      const { fired } = lateProxy.addRule({
        match: (m) => m.type === 'Q' || m.type === 'P',
        action: 'cut',
        times: 2,
      });
      void fired.then((m) => {
        lateCut = m.text
          .replace(/[^\x20-\x7e]+/g, ' ')
          .trim()
          .slice(0, 200);
      });
      if (FAULT_EVERY > 0) lateProxy.chaos({ everyMessages: FAULT_EVERY });
      for (let i = 0; i < LATE_WORKERS; i++) {
        const late = spawnOne(lateProxy.url);
        workers.push(late);
        everyone.push(late);
      }
    }
    replaceDead();
    await progress();
    await sleep(2_000);
  }

  // The faults go on until the work is done; jobs that stop moving (stuck `doing` behind a
  // fault, say) end them early, and the drain below then shows whether they ever finish.
  let lastLeft = Number.POSITIVE_INFINITY;
  let movedAt = Date.now();
  for (;;) {
    replaceDead();
    const left = await progress();
    if (left < lastLeft) movedAt = Date.now();
    lastLeft = left;
    if (appended && left === 0 && seconds() >= MIN_FAULT_S) break;
    if (seconds() > TIMEOUT_S || (appended && Date.now() - movedAt > STUCK_S * 1_000)) {
      console.log(`  still ${left} jobs left after ${seconds()} s of faults: stopping the faults anyway`);
      break;
    }
    await sleep(2_000);
  }
  proxy.stopChaos();
  lateProxy.stopChaos();
  // Jobs finished per second while the faults went on (against a CHAOS_FAULT_EVERY=0 run).
  const jobsPerSecond =
    Math.round(((JOBS + deferredKept - lastLeft) / Math.max(1, seconds() - faultsFrom)) * 10) / 10;
  const faultSeconds = seconds();
  const appenderReports = await reports;

  // Drain: no more faults; whatever is left must now finish by itself.
  let drained = true;
  await waitFor(
    'the jobs to finish and the processor to catch up',
    async () => {
      replaceDead();
      if ((await unfinished()) > 0) return false;
      const [status] = await direct.processors.status('fault-copy');
      return status && status.lagEvents === 0 && status.state === 'idle';
    },
    DRAIN_S * 1_000,
    500,
  ).catch((error) => {
    drained = false;
    console.log(`  ${String(error)}`);
  });
  const [processor] = await direct.processors.status('fault-copy');
  replaceDead();
  await stopAll(workers);
  const exits = await Promise.all(workers.map((w) => w.exited));

  const jobs = await countJobs(pool, schema);
  const kept = await countKeptJobs(pool, schema, KEPT_TASKS);
  const pairs = await countLockedPairs(pool, schema);
  const events = await countEvents(pool, schema, appenderReports);
  const processed = await countProcessed(pool, schema);
  const { rows: stuck } = await pool.query(
    `SELECT id::text, task, status, attempts, max_attempts, worker_id, left(last_error ->> 'message', 160) AS error
     FROM "${schema}".jobs WHERE status IN ('todo', 'doing') ORDER BY id LIMIT 10`,
  );
  const errored = appenderReports.reduce((sum, r) => sum + r.errored.length, 0);
  const byTask = Object.fromEntries(kept.map((k) => [k.task, k]));
  const poison = kept.filter((k) => POISON_TASKS.includes(k.task));
  const locked = byTask['locked-pair']!;
  console.log(
    JSON.stringify(
      {
        faults: proxy.injected,
        lateWorkerFaults: lateProxy.injected,
        lateWorkerFirstCut: lateCut,
        targeted,
        faultSeconds,
        jobsPerSecond,
        seconds: seconds(),
        drained,
        jobs,
        kept,
        pairs,
        events: { ...events, appenderErrors: errored },
        processed,
        processor: processor && {
          state: processor.state,
          lagEvents: processor.lagEvents,
          eventsProcessed: processor.eventsProcessed,
          lastError: processor.lastError?.slice(0, 300) ?? null,
          deadLetters: processor.deadLetters,
        },
        stuck,
        workerDeaths: deaths.length,
        exits,
      },
      null,
      2,
    ),
  );
  for (const proc of workers) console.log(`--- ${proc.name} (last lines)\n${logSummary(proc.output())}`);

  const injected = Object.values(proxy.injected).reduce((a, b) => a + b, 0);
  checks.check(
    'faults were injected',
    injected > 0 || FAULT_EVERY === 0,
    `${JSON.stringify(proxy.injected)}; at chosen moments (fired/armed): ${Object.entries(targeted)
      .map(([key, t]) => `${key} ${t.fired}/${t.armed}`)
      .join(', ')}`,
  );
  checks.check('the workers drained after the faults stopped', drained, `within ${DRAIN_S} s`);
  checks.check(
    'nothing left doing or todo',
    jobs.doing === 0 && jobs.todo === 0 && kept.every((k) => k.doing === 0 && k.todo === 0),
    `chaos-*: doing ${jobs.doing}, todo ${jobs.todo}; ${kept.map((k) => `${k.task} ${k.doing}/${k.todo}`).join(', ')}`,
  );
  checks.check(
    'every chaos-tx/plain job has its effect',
    jobs.completed === jobs.deferred && jobs.missing === 0,
    `${jobs.completed}/${jobs.deferred}, ${jobs.missing} missing`,
  );
  checks.check(
    'no chaos-tx/plain job dead-lettered',
    jobs.failed === 0,
    `${jobs.failed} failed ${jobs.failedErrors.join(' | ').slice(0, 500)}`,
  );
  checks.check(
    'chaos-tx effects written exactly once',
    jobs.duplicates.tx === 0,
    `${jobs.duplicates.tx} twice`,
  );
  checks.check(
    'chaos-plain duplicates only from re-runs',
    jobs.duplicates.plain <= jobs.jobsRunMoreThanOnce,
    `${jobs.duplicates.plain} duplicated (at-least-once), ${jobs.jobsRunMoreThanOnce} re-run, ${jobs.extraRuns} extra runs`,
  );
  checks.check(
    'every poison job dead-lettered after its attempts',
    poison.every((k) => k.total > 0 && k.failed === k.total && k.spent === k.total),
    poison.map((k) => `${k.task} ${k.spent} spent/${k.failed} failed/${k.total}`).join(', '),
  );
  checks.check(
    'poison jobs dead-lettered by their own error, not by stall recovery',
    poison.every((k) => k.byRecovery === 0),
    poison
      .map((k) => `${k.task} ${k.byRecovery} by recovery, ${k.ownText} with own text, of ${k.failed}`)
      .join(', '),
  );
  checks.check(
    "every failed job's last_error is readable text",
    kept.every((k) => k.unreadable === 0),
    kept
      .map((k) => `${k.task} ${k.unreadable} unreadable of ${k.failed} (${k.lastErrorBytes} B at most)`)
      .join(', '),
  );
  checks.check(
    'every locked-pair job done, or superseded by its partner',
    locked.total > 0 && locked.succeeded + locked.superseded === locked.total && pairs.noneSucceeded === 0,
    `${locked.succeeded} done + ${locked.superseded} superseded of ${locked.total} (${pairs.pairs} pairs, ` +
      `${pairs.withPartner} with a partner, ${pairs.failedTogether} failed together on one worker, ${pairs.noneSucceeded} with none done)`,
  );
  checks.check(
    'every acknowledged batch stored, whole and once',
    events.ackedMissing === 0 && events.partial === 0 && events.unexpected === 0,
    `${events.batchesAcked} acked, ${events.ackedMissing} missing or wrong, ${events.partial} partial, ${events.unexpected} unknown`,
  );
  checks.check(
    'errored batches absent, or whole when only the COMMIT reply was lost',
    events.erroredAbsent + events.erroredCommitted === errored,
    `${errored} errored: ${events.erroredAbsent} absent, ${events.erroredCommitted} committed`,
  );
  checks.check(
    'every stored event processed exactly once',
    processed.missing === 0 && processed.duplicated === 0 && processed.extra === 0 && processed.events > 0,
    `${processed.events} events, ${processed.rows} rows: ${processed.missing} missing, ${processed.duplicated} twice, ${processed.extra} extra`,
  );
  checks.check('no worker died by itself', deaths.length === 0, deathCauses(deaths));
  if (deaths.length > 0) for (const death of deaths) console.log(`--- died: ${death.slice(-1_500)}`);
  checks.check(
    'workers stopped cleanly on SIGTERM',
    exits.every((code) => code === 0),
    `exit codes ${exits.join(', ')}`,
  );
} catch (error) {
  checks.check('scenario ran to the end', false, String(error));
  for (const proc of everyone) console.log(`--- ${proc.name}\n${logSummary(proc.output())}`);
} finally {
  await stopAll(everyone, 5_000);
  await proxy.close();
  await lateProxy.close();
  await direct.close();
  checks.finish();
  await drop();
  process.exit();
}

/** A worker's warnings and errors, counted by message, with one sample each (cut short: some carry MBs). */
function logSummary(output: string): string {
  const seen = new Map<string, { n: number; sample: string }>();
  for (const line of output.split('\n')) {
    let key = line.slice(0, 120);
    if (line.startsWith('{')) {
      try {
        const entry = JSON.parse(line) as { msg?: string; level?: number };
        key = `[${entry.level}] ${entry.msg}`;
      } catch {
        // a line cut by the output buffer: keyed by its start
      }
    }
    if (!key.trim()) continue;
    const entry = seen.get(key);
    if (entry) entry.n += 1;
    else seen.set(key, { n: 1, sample: line.slice(0, 600) });
  }
  return [...seen.entries()].map(([key, { n, sample }]) => `  ${n} x ${key}\n      ${sample}`).join('\n');
}

/** Deaths counted by their cause: the first error line of what each process printed last. */
function deathCauses(outputs: string[]): string {
  const causes = new Map<string, number>();
  for (const output of outputs) {
    const lines = output.split('\n');
    const at = lines.findIndex((line) => /^(\w*Error\b|outbatch: )/.test(line));
    const cause = at < 0 ? (lines.at(-2) ?? '?') : `${lines[at]} ${lines[at + 1]?.trim() ?? ''}`;
    causes.set(cause.slice(0, 200), (causes.get(cause.slice(0, 200)) ?? 0) + 1);
  }
  return [...causes].map(([cause, n]) => `${n} x ${cause}`).join('; ');
}
