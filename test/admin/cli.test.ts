// @smoke
/**
 * `outbatch dashboard` and `outbatch worker --dashboard` as a user runs them: they serve
 * /healthz and /metrics, stop cleanly on SIGTERM, and refuse a bad --port with exit 2.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { CLI, databaseUrl, isolatedApp, ROOT, runCli, type TestApp } from '../helpers.js';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
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
    const port = await freePort();
    const child = start(['--schema', t.schema, 'dashboard', '--port', String(port)]);
    try {
      const health = await until('/healthz', async () => {
        const response = await fetch(`http://127.0.0.1:${port}/healthz`);
        return response.ok ? response.json() : undefined;
      });
      assert.deepEqual(health, { status: 'ok' });
      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      assert.match(metrics, /^outbatch_workers_alive 0$/m);
      const refused = await fetch(`http://127.0.0.1:${port}/api/jobs/1/retry`, { method: 'POST' });
      assert.equal(refused.status, 403);
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await exited(child), 0);
  });

  it('outbatch worker --dashboard counts the jobs it runs in /metrics', async () => {
    await t.app.defer('hello', {}, { queue: 'cli' });
    const port = await freePort();
    const child = start([
      '--schema',
      t.schema,
      'worker',
      '--app',
      'test/admin/fixture-app.ts',
      '--queue',
      'cli',
      '--dashboard',
      '--port',
      String(port),
    ]);
    try {
      await until('the job counted', async () => {
        const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
        return /^outbatch_jobs_completed_total\{task="hello"\} 1$/m.test(text) ? true : undefined;
      });
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
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
