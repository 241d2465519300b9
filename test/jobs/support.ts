/** Shared by the job tests: waiting for an outcome, and worker processes. */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { after } from 'node:test';
import type pg from 'pg';
import type { App } from '../../src/app.js';
import { CLI, databaseUrl, ROOT } from '../helpers.js';

export const FIXTURE_APP = path.join(ROOT, 'test', 'fixtures', 'jobs-app.ts');

/**
 * Polls until `check` returns a truthy value; fails the test with `what` after `timeoutMs`,
 * adding what `explain` reports (the state a flaky run needs to be understood).
 */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T>,
  timeoutMs = 20_000,
  explain?: () => Promise<unknown>,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) {
      const state = explain
        ? `\n${JSON.stringify(await explain().catch((error) => String(error)), null, 1)}`
        : '';
      throw new Error(`timed out waiting for ${what}${state}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * A processor's row, its run jobs, and the transactions that hold the read horizon back:
 * what a processor test prints when it times out.
 */
export async function processorState(pool: pg.Pool, schema: string, name: string): Promise<unknown> {
  const q = `"${schema}"`;
  const [processor, jobs, horizon] = await Promise.all([
    pool.query(`SELECT * FROM ${q}.processors WHERE name = $1`, [name]),
    pool.query(
      `SELECT id, status, attempts, run_at, lock, queueing_lock, last_error->>'message' AS error
       FROM ${q}.jobs WHERE task = $1 ORDER BY id DESC LIMIT 10`,
      [`processor:${name}`],
    ),
    pool.query(
      `SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin,
              (SELECT tx_id::text FROM ${q}.events ORDER BY tx_id DESC LIMIT 1) AS newest_event_tx,
              (SELECT json_agg(json_build_object('pid', pid, 'xid', backend_xid::text, 'since', xact_start,
                        'state', state, 'query', left(query, 120)))
               FROM pg_stat_activity WHERE backend_xid IS NOT NULL) AS writers`,
    ),
  ]);
  return { processor: processor.rows, jobs: jobs.rows, horizon: horizon.rows[0] };
}

export async function createRunsTable(pool: pg.Pool, schema: string): Promise<void> {
  await pool.query(
    `CREATE TABLE "${schema}".runs (job_id bigint NOT NULL, what text NOT NULL, attempt int NOT NULL, pid int NOT NULL)`,
  );
}

export interface WorkerProcess {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

// Worker processes still running when a file's tests are over: a test that failed before
// stopping its worker left it running, which kept the file's process (and the server) busy
// until CI's end — half an hour once, under load. They are killed after the file's tests.
const running = new Set<ChildProcess>();
after(() => {
  for (const child of running) child.kill('SIGKILL');
});

/** `outbatch worker --app test/fixtures/jobs-app.ts ...` (or another app module) as its own process. */
export function spawnWorker(
  schema: string,
  args: string[] = [],
  app = FIXTURE_APP,
  env: NodeJS.ProcessEnv = {},
): WorkerProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'worker', '--app', app, ...args], {
    cwd: ROOT,
    env: { ...process.env, DATABASE_URL: databaseUrl(), OUTBATCH_SCHEMA: schema, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk) => {
    output += chunk;
  });
  child.stderr?.on('data', (chunk) => {
    output += chunk;
  });
  running.add(child);
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      running.delete(child);
      resolve(code);
    }),
  );
  return { child, output: () => output, exited };
}

/** Resolves once the worker process has registered itself in the workers table. */
export async function workerStarted(pool: pg.Pool, schema: string, worker: WorkerProcess): Promise<void> {
  await waitFor(`worker ${worker.child.pid} to start (output so far: ${worker.output()})`, async () => {
    const { rows } = await pool.query(`SELECT 1 FROM "${schema}".workers WHERE pid = $1`, [worker.child.pid]);
    return rows.length > 0;
  });
}

/** Worker settings for tests: quick polls, beats and recovery passes, no stall recovery. */
export const FAST = {
  pollInterval: 50,
  heartbeatInterval: 100,
  recoverInterval: 100,
  stallTimeout: 3_600_000,
};

/**
 * Runs `app`'s worker (FAST, then `options`) around `body` once it has registered in
 * `schema`'s workers table, then stops it gracefully and closes the app, whatever `body` did.
 */
export async function withRunningWorker(
  app: App,
  pool: pg.Pool,
  schema: string,
  body: () => Promise<void>,
  options: Record<string, unknown> = {},
): Promise<void> {
  const controller = new AbortController();
  const running = app.run({ ...FAST, ...options, signal: controller.signal });
  try {
    await waitFor(
      'the worker to register',
      async () => (await pool.query(`SELECT 1 FROM "${schema}".workers`)).rowCount,
    );
    await body();
  } finally {
    controller.abort();
    try {
      await running;
    } finally {
      await app.close();
    }
  }
}

/** A gate handlers wait at (`await opened`) until the test calls `open()`. */
export function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { open, opened };
}

/**
 * Puts a cancelled job whose old run still goes back to `todo`, beside that run. `jobs
 * retry` refuses it (checked here: its new claim would have the old run's key); the state
 * is made by SQL, as an operator's hand-written UPDATE could: the worker's guards must hold
 * in it too. The job's queue is woken.
 */
export async function retryBesideItsOldRun(
  app: App,
  pool: pg.Pool,
  schema: string,
  id: string,
): Promise<void> {
  const { done, skipped } = await app.jobs.retry({ ids: [id] });
  assert.deepEqual(done, []);
  assert.match(skipped[0]?.reason ?? '', /has not stopped yet on worker/);
  const { rows } = await pool.query(
    `UPDATE "${schema}".jobs SET status = 'todo', run_at = now(), attempts = 0, worker_id = NULL
     WHERE id = $1 RETURNING queue`,
    [id],
  );
  await pool.query('SELECT pg_notify($1, $2)', [`${schema}_jobs`, rows[0].queue]);
}
