// @smoke
/**
 * `outbatch dashboard` and `outbatch worker --dashboard` as a user runs them: they serve
 * /healthz and /metrics, stop cleanly on SIGTERM, and refuse a bad --port with exit 2.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { CLI, databaseUrl, isolatedApp, ROOT, runCli, type TestApp } from '../helpers.js';

/**
 * The address the child's dashboard bound (`--port 0`), from what it prints: a port picked
 * free here and released could be taken by another test file's server before the child
 * bound it, and the test then talked to that one (seen in CI: a 401 from a dashboard with
 * a token). `dashboard` prints "dashboard on <url>"; the worker logs "dashboard listening on <url>".
 */
function boundUrl(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let output = '';
    const look = (chunk: Buffer) => {
      output += chunk.toString();
      const found = /dashboard (?:on|listening on) (http:\/\/127\.0\.0\.1:\d+)/.exec(output);
      if (found) resolve(found[1]!);
    };
    child.stdout?.on('data', look);
    child.stderr?.on('data', look);
    child.once('exit', (code) => reject(new Error(`exited ${code} before serving: ${output}`)));
  });
}

function start(args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'warn', DATABASE_URL: databaseUrl(), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

async function until<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 300; i++) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.once('exit', (code) => resolve(code));
  });
}

describe('dashboard CLI', () => {
  let t: TestApp;
  before(async () => {
    t = await isolatedApp('admin_cli');
  });
  after(async () => {
    await t?.cleanup();
  });

  it('outbatch dashboard serves /healthz and /metrics and stops on SIGTERM', async () => {
    const child = start(['--schema', t.schema, 'dashboard', '--port', '0']);
    try {
      const base = await boundUrl(child);
      const health = await until('/healthz', async () => {
        const response = await fetch(`${base}/healthz`);
        return response.ok ? response.json() : undefined;
      });
      assert.deepEqual(health, { status: 'ok' });
      const metrics = await (await fetch(`${base}/metrics`)).text();
      assert.match(metrics, /^outbatch_workers_alive 0$/m);
      const refused = await fetch(`${base}/api/jobs/1/retry`, { method: 'POST' });
      assert.equal(refused.status, 403);
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await exited(child), 0);
  });

  it('outbatch worker --dashboard counts the jobs it runs in /metrics', async () => {
    await t.app.defer('hello', {}, { queue: 'cli' });
    const child = start(
      [
        '--schema',
        t.schema,
        'worker',
        '--app',
        'test/admin/fixture-app.ts',
        '--queue',
        'cli',
        '--dashboard',
        '--port',
        '0',
      ],
      { LOG_LEVEL: 'info' },
    );
    try {
      const base = await boundUrl(child);
      await until('the job counted', async () => {
        const text = await (await fetch(`${base}/metrics`)).text();
        return /^outbatch_jobs_completed_total\{task="hello"\} 1$/m.test(text) ? true : undefined;
      });
      const text = await (await fetch(`${base}/metrics`)).text();
      assert.match(text, /^outbatch_workers_alive 1$/m);
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await exited(child), 0);
  });

  it('a bad --port exits 2 with one line', async () => {
    const result = await runCli(['--schema', t.schema, 'dashboard', '--port', 'http'], {
      DATABASE_URL: databaseUrl(),
    });
    assert.equal(result.code, 2);
    assert.equal(result.stderr.trim(), 'outbatch: --port "http" is invalid: expected a port from 0 to 65535');
  });

  it('a bad --allowed-host exits 2 with one line naming it', async () => {
    const result = await runCli(
      ['--schema', t.schema, 'dashboard', '--allowed-host', 'ok.example', '--allowed-host', 'not a host'],
      {
        DATABASE_URL: databaseUrl(),
      },
    );
    assert.equal(result.code, 2);
    assert.match(
      result.stderr.trim(),
      /^outbatch: --allowed-host "not a host" is invalid: expected a host name or address/,
    );
    assert.equal(result.stderr.trim().split('\n').length, 1);
  });
});
