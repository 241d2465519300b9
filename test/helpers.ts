/** Shared by the test files: an app in a schema of its own, and a way to run the CLI. */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { type App, type AppOptions, createApp } from '../src/app.js';
import type { Queryable } from '../src/db/queryable.js';
import type { StoredEvent } from '../src/events/storedEvent.js';
import { createLogger, type Logger } from '../src/log.js';
import { bulkWrite } from '../src/processors/operators.js';
import type { AppTypes } from '../src/typing/declare.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CLI = path.join(ROOT, 'src', 'cli', 'main.ts');

export function databaseUrl(): string {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is not set: run the tests with "npm test"');
  return url;
}

export function uniqueSchema(label: string): string {
  return `t_${label.replace(/[^a-z0-9_]/g, '_')}_${randomBytes(4).toString('hex')}`;
}

export interface TestApp<T extends AppTypes = AppTypes> {
  app: App<T>;
  schema: string;
  pool: pg.Pool;
  /** Drops the schema and closes every connection. */
  cleanup(): Promise<void>;
}

/** A migrated app in a fresh schema, so test files never see each other's rows. */
export async function isolatedApp<T extends AppTypes = AppTypes>(
  label: string,
  options: Partial<AppOptions<T>> = {},
): Promise<TestApp<T>> {
  const schema = uniqueSchema(label);
  const app = createApp<T>({ databaseUrl: databaseUrl(), schema, ...options });
  await app.migrate();
  const pool = new pg.Pool({ connectionString: databaseUrl(), max: 4 });
  return {
    app,
    schema,
    pool,
    async cleanup() {
      await app.close();
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await pool.end();
    },
  };
}

/**
 * Exactly once, counted: a table of how many times each event was applied (`appliedTable`),
 * and the processor pipeline step that counts a page into it in the page's transaction.
 * An event applied twice shows as n = 2.
 */
export const appliedTable = (q: string) =>
  `CREATE TABLE ${q}.applied (position bigint PRIMARY KEY, n int NOT NULL)`;

export const countApplied = (tx: Queryable, q: string) =>
  bulkWrite(
    tx,
    `INSERT INTO ${q}.applied AS a SELECT unnest($1::bigint[]), 1
     ON CONFLICT (position) DO UPDATE SET n = a.n + 1`,
    (events: StoredEvent[]) => [events.map((event) => event.position.toString())],
  );

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `outbatch ...args` as a user would, from source. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}, input?: string): Promise<CliResult> {
  return startCli(args, env, input).result;
}

/** The CLI as a child process the test can watch while it runs (`output()`: stdout and stderr so far). */
export function startCli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  input?: string,
): { result: Promise<CliResult>; output(): string } {
  return startProcess(process.execPath, ['--import', 'tsx', CLI, ...args], { env, input });
}

/**
 * Any program as a child process, LOG_LEVEL=warn, in the checkout unless `cwd` says otherwise;
 * `onOutput` sees stdout and stderr so far at every chunk.
 */
export function startProcess(
  command: string,
  args: string[],
  options: {
    cwd?: string;
    env?: NodeJS.ProcessEnv;
    input?: string;
    onOutput?: (output: string) => void;
  } = {},
): { result: Promise<CliResult>; output(): string } {
  const child = spawn(command, args, {
    cwd: options.cwd ?? ROOT,
    env: { ...process.env, LOG_LEVEL: 'warn', ...options.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  const output = () => stdout + stderr;
  child.stdout.on('data', (chunk) => {
    stdout += chunk;
    options.onOutput?.(output());
  });
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
    options.onOutput?.(output());
  });
  const result = new Promise<CliResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  child.stdin.end(options.input ?? '');
  return { result, output };
}

export function createTestApp(options: AppOptions): App {
  return createApp({ databaseUrl: databaseUrl(), ...options });
}

/** A JSON logger whose lines the test can read back (`lines`, one string per record). */
export function captureLog(level = 'info'): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      lines.push(String(chunk));
      done();
    },
  });
  return { log: createLogger({ level, destination: stream, pretty: false }), lines };
}

/** The node types of an `EXPLAIN (FORMAT JSON)` result's plan, depth first (root first). */
export function planNodeTypes(explained: { 'QUERY PLAN': { Plan: unknown }[] }[]): string[] {
  const nodes: string[] = [];
  const walk = (node: { 'Node Type': string; Plans?: unknown[] }) => {
    nodes.push(node['Node Type']);
    for (const child of node.Plans ?? []) walk(child as typeof node);
  };
  walk(explained[0]!['QUERY PLAN'][0]!.Plan as { 'Node Type': string; Plans?: unknown[] });
  return nodes;
}
