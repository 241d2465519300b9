/**
 * Kill test: CHAOS_JOBS jobs (half chaos-tx, half chaos-plain), CHAOS_WORKERS worker
 * processes, and every 2-5 s a random (started) worker disturbed: SIGKILLed and restarted, or
 * (every CHAOS_PAUSE_EVERY-th time) SIGSTOPped past its stall timeout and resumed — a
 * GC pause or frozen VM, which lets recovery hand its jobs to others while it still
 * runs them. Then every job must have its effect, nothing may stay `doing`, and a job
 * may run twice only if an earlier run was on a disturbed process.
 *
 *   npm run chaos:kill                        # 50k jobs, 4 workers
 *   CHAOS_JOBS=5000 npm run chaos:kill        # quick
 */
import {
  envInt,
  makeChecks,
  type Proc,
  recoveryLog,
  setupSchemas,
  sleep,
  spawnWorker,
  stopAll,
  stopOnSignal,
  waitFor,
} from './support.js';
import { countJobs, createDeferredTable, deferJobs, jobsLeft } from './verify.js';

const JOBS = envInt('CHAOS_JOBS', 50_000);
const WORKERS = envInt('CHAOS_WORKERS', 4);
const CONCURRENCY = envInt('CHAOS_CONCURRENCY', 10);
const STALL_MS = envInt('CHAOS_STALL_MS', 2_000);
const JOB_MS = envInt('CHAOS_JOB_MS', 50);
const EVERY_MIN_MS = envInt('CHAOS_KILL_MIN_MS', 2_000);
const EVERY_MAX_MS = envInt('CHAOS_KILL_MAX_MS', 5_000);
const PAUSE_EVERY = envInt('CHAOS_PAUSE_EVERY', 4); // 0: kills only
const TIMEOUT_MS = envInt('CHAOS_TIMEOUT_S', 600) * 1_000;

const { schema, pool, drop } = await setupSchemas('kill');
const checks = makeChecks('chaos:kill');
const started = Date.now();
const everyone: Proc[] = [];
stopOnSignal(() => everyone);
console.log(
  `kill test: ${JOBS} jobs, ${WORKERS} workers x concurrency ${CONCURRENCY}, stall timeout ${STALL_MS} ms, schema ${schema}`,
);
try {
  await createDeferredTable(pool, schema);
  await deferJobs(pool, schema, JOBS);
  let serial = 0;
  const spawnOne = () =>
    spawnWorker(
      `worker-${++serial}`,
      schema,
      ['--stall-timeout', `${STALL_MS}ms`, '--concurrency', String(CONCURRENCY), '--shutdown-timeout', '5s'],
      { CHAOS_JOB_MS: String(JOB_MS), CHAOS_POOL_MAX: String(CONCURRENCY + 2) },
    );
  const slots: Proc[] = Array.from({ length: WORKERS }, spawnOne);
  everyone.push(...slots);
  let kills = 0;
  let pauses = 0;
  const inHand = { killed: 0, paused: 0 }; // jobs the victims held (claimed, running or buffered)

  /** Jobs `doing` for a process: measured once it is stopped or dead, so no claim is in flight. */
  const holding = async (pid: number) => {
    await sleep(300);
    const { rows } = await pool.query(
      `SELECT count(*)::int AS n FROM "${schema}".jobs j JOIN "${schema}".workers w ON w.id = j.worker_id
       WHERE j.status = 'doing' AND w.pid = $1`,
      [pid],
    );
    return rows[0].n as number;
  };

  // Only a worker that has started (registered) is disturbed: killing one still loading
  // its modules tests nothing, and on a loaded machine would starve the run.
  const disturb = async () => {
    const { rows: live } = await pool.query(`SELECT pid FROM "${schema}".workers WHERE pid = ANY ($1)`, [
      slots.map((proc) => proc.child.pid),
    ]);
    const candidates = slots.flatMap((proc, i) =>
      live.some((row) => row.pid === proc.child.pid) ? [i] : [],
    );
    if (candidates.length === 0) return;
    const slot = candidates[Math.floor(Math.random() * candidates.length)]!;
    const victim = slots[slot]!;
    const pid = victim.child.pid!;
    const pause = PAUSE_EVERY > 0 && (kills + pauses + 1) % PAUSE_EVERY === 0;
    await pool.query(`INSERT INTO "${schema}".disturbed (pid, how) VALUES ($1, $2)`, [
      pid,
      pause ? 'paused' : 'killed',
    ]);
    if (pause) {
      pauses += 1;
      victim.child.kill('SIGSTOP');
      inHand.paused += await holding(pid);
      await sleep(STALL_MS + 1_200);
      victim.child.kill('SIGCONT');
    } else {
      kills += 1;
      victim.killed = true;
      victim.child.kill('SIGKILL');
      await victim.exited;
      inHand.killed += await holding(pid);
      const replacement = spawnOne();
      slots[slot] = replacement;
      everyone.push(replacement);
    }
  };

  let left = JOBS;
  while (left > 0) {
    if (Date.now() - started > TIMEOUT_MS)
      throw new Error(`not done after ${TIMEOUT_MS} ms: ${left} jobs left`);
    await sleep(EVERY_MIN_MS + Math.random() * (EVERY_MAX_MS - EVERY_MIN_MS));
    left = await jobsLeft(pool, schema);
    if (left > 0) await disturb();
    process.stdout.write(
      `  ${Math.round((Date.now() - started) / 1000)} s: ${left} jobs left, ${kills} kills, ${pauses} pauses\n`,
    );
  }
  // A paused worker may still be finishing what recovery took from it: let it settle.
  await waitFor('no job left', async () => (await jobsLeft(pool, schema)) === 0, 60_000);
  const seconds = Math.round((Date.now() - started) / 1000);
  // A worker stopped while still loading has no SIGTERM handler yet: wait until each has registered.
  await waitFor(
    'every worker to have registered',
    async () => {
      const { rows } = await pool.query(
        `SELECT count(*)::int AS n FROM "${schema}".workers WHERE pid = ANY ($1)`,
        [slots.map((proc) => proc.child.pid)],
      );
      return rows[0].n === slots.length;
    },
    60_000,
  );
  await stopAll(slots);
  const unexpectedExits = [];
  for (const proc of everyone) {
    const code = await proc.exited;
    if (!proc.killed && code !== 0)
      unexpectedExits.push(`${proc.name} exited ${code}: ${proc.output().slice(-500)}`);
  }

  // Recovery from a worker that was neither killed nor paused: a false stall (a live
  // worker silent past the stall timeout, e.g. on an overloaded machine). Recorded as such.
  const { recoveredFrom, rolledBackAway } = recoveryLog(everyone);
  const { rows: disturbedRows } = await pool.query(`SELECT DISTINCT pid FROM "${schema}".disturbed`);
  const disturbedPids = new Set(disturbedRows.map((row) => row.pid as number));
  let falseStallJobs = 0;
  for (const [pid, count] of recoveredFrom) {
    if (disturbedPids.has(pid)) continue;
    falseStallJobs += count;
    await pool.query(`INSERT INTO "${schema}".disturbed (pid, how) VALUES ($1, 'stalled')`, [pid]);
  }
  const recovered = [...recoveredFrom.values()].reduce((a, b) => a + b, 0);
  const c = await countJobs(pool, schema);
  console.log(`\n${JOBS} jobs in ${seconds} s with ${kills} kills and ${pauses} pauses`);
  console.log(
    JSON.stringify(
      { ...c, kills, pauses, inHand, recovered, falseStallJobs, rolledBackAway, seconds },
      null,
      2,
    ),
  );
  checks.check('some workers were disturbed', kills + pauses > 0, `${kills} kills, ${pauses} pauses`);
  checks.check(
    'every job has its effect',
    c.completed === c.deferred && c.missing === 0,
    `${c.completed}/${c.deferred}, ${c.missing} missing`,
  );
  checks.check(
    'nothing left doing or todo',
    c.doing === 0 && c.todo === 0,
    `doing ${c.doing}, todo ${c.todo}`,
  );
  checks.check('nothing dead-lettered', c.failed === 0, `${c.failed} failed ${c.failedErrors.join(' | ')}`);
  checks.check(
    'chaos-tx effects written exactly once',
    c.duplicates.tx === 0,
    `${c.duplicates.tx} jobs with 2+ rows`,
  );
  checks.check(
    'chaos-plain duplicates only from re-runs',
    c.duplicates.plain <= c.jobsRunMoreThanOnce,
    `${c.duplicates.plain} duplicated (at-least-once), ${c.jobsRunMoreThanOnce} jobs re-run`,
  );
  const after = (match: (fate: string, mode: string) => boolean) =>
    Object.entries(c.rerunsAfter)
      .filter(([key]) => match(key.split('/')[0]!, key.split('/')[1]!))
      .reduce((sum, [, n]) => sum + n, 0);
  checks.check(
    'every re-run follows a run on a killed, paused or stalled worker',
    c.unexplainedReruns === 0,
    `${c.unexplainedReruns} unexplained; earlier runs by fate/mode: ${JSON.stringify(c.rerunsAfter)}`,
  );
  // In the job's transaction only a run in flight can run again: a handler (at most
  // concurrency) or a finished handler whose COMMIT is in flight on its own connection
  // (its slot is already free; at most the pool size).
  const perKill = CONCURRENCY + CONCURRENCY + 2;
  const txAfterKills = after((fate, mode) => fate === 'killed' && mode === 'tx');
  // A worker that stalled falsely and was killed later has both fates on one pid, so the
  // bound only holds cleanly on a run without false stalls; otherwise it is reported.
  if (falseStallJobs === 0) {
    checks.check(
      'chaos-tx re-runs after kills within kills x (concurrency + pool)',
      txAfterKills <= kills * perKill,
      `${txAfterKills} <= ${kills} x ${perKill}`,
    );
  } else {
    console.log(
      `note chaos-tx re-runs after kills: ${txAfterKills} (kills x (concurrency + pool) = ${kills * perKill}); not checked: ${falseStallJobs} jobs were recovered from live workers (false stalls), which may later have been killed too`,
    );
  }
  // Otherwise also a job whose handler finished but whose (batched) completion was not yet
  // written, or (paused) one claimed ahead: never more than the victims held.
  const afterDisturbances = after((fate) => fate !== 'stalled' && fate !== 'undisturbed');
  checks.check(
    're-runs after kills and pauses within the jobs the victims held',
    afterDisturbances <= inHand.killed + inHand.paused,
    `${afterDisturbances} <= ${inHand.killed} + ${inHand.paused}`,
  );
  const afterStalls = after((fate) => fate === 'stalled');
  checks.check(
    're-runs after false stalls within the jobs recovered from them',
    afterStalls <= falseStallJobs,
    `${afterStalls} <= ${falseStallJobs}`,
  );
  checks.check('no worker crashed by itself', unexpectedExits.length === 0, unexpectedExits.join('\n'));
} catch (error) {
  checks.check('scenario ran to the end', false, String(error));
} finally {
  await stopAll(everyone, 5_000);
  checks.finish();
  await drop();
  process.exit();
}
