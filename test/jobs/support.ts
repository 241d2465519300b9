/** Shared by the job tests: waiting for an outcome, and worker processes. */
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import type pg from 'pg';
import { CLI, databaseUrl, ROOT } from '../helpers.js';

export const FIXTURE_APP = path.join(ROOT, 'test', 'fixtures', 'jobs-app.ts');

/** Polls until `check` returns a truthy value; fails the test with `what` after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T>,
  timeoutMs = 20_000,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
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
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, output: () => output, exited };
}

/** Resolves once the worker process has registered itself in the workers table. */
export async function workerStarted(pool: pg.Pool, schema: string, worker: WorkerProcess): Promise<void> {
  await waitFor(`worker ${worker.child.pid} to start (output so far: ${worker.output()})`, async () => {
    const { rows } = await pool.query(`SELECT 1 FROM "${schema}".workers WHERE pid = $1`, [worker.child.pid]);
    return rows.length > 0;
  });
}
