// @smoke
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import pg from 'pg';
import { type CliResult, databaseUrl, ROOT, runCli, uniqueSchema } from './helpers.js';

const schema = uniqueSchema('demo');
const shop = `${schema}_shop`;
after(async () => {
  const pool = new pg.Pool({ connectionString: databaseUrl() });
  await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE; DROP SCHEMA IF EXISTS "${shop}" CASCADE`);
  await pool.end();
});

/** `npm start -- ...args` as a user runs it; `onOutput` sees stdout and stderr so far. */
function startDemo(args: string[], onOutput: (output: string) => void = () => {}): Promise<CliResult> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', path.join(ROOT, 'pipelines', 'shop', 'start.ts'), ...args],
    {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => {
    stdout += chunk;
    onOutput(stdout + stderr);
  });
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
    onOutput(stdout + stderr);
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('the demo (npm start)', () => {
  it('appends orders, runs the processors and the digest jobs, serves the dashboard, stops cleanly, and continues on restart', async () => {
    const args = ['--duration', '6', '--rate', '50', '--json', '--schema', schema, '--shop-schema', shop];
    let page: Promise<number | string> | undefined;
    const first = await startDemo(args, (output) => {
      const url = /dashboard on (http:\/\/127\.0\.0\.1:\d+)/.exec(output)?.[1];
      // The page is asked for while the demo runs (--duration counts from after this line).
      if (url && !page) {
        page = fetch(`${url}/`).then(
          (response) => response.status,
          (error: Error) => error.message,
        );
      }
    });
    assert.equal(first.code, 0, first.stderr);
    assert.ok(page, `no dashboard URL printed: ${first.stderr}`);
    assert.equal(await page, 200);
    const summary = JSON.parse(first.stdout);
    assert.ok(summary.appended > 0, `nothing appended: ${first.stdout}${first.stderr}`);
    assert.deepEqual(
      summary.processors.map((p: { name: string }) => p.name),
      ['customer-digests', 'orders-export', 'revenue-by-customer-day'],
    );
    const revenue = summary.processors.find((p: { name: string }) => p.name === 'revenue-by-customer-day');
    // A timed run drains before it stops: every appended order is in the projection.
    assert.equal(revenue.lagEvents, 0);
    assert.equal(Number(revenue.processed), summary.appended);

    const second = await startDemo(args);
    assert.equal(second.code, 0, second.stderr);
    const again = JSON.parse(second.stdout);
    assert.ok(Number(again.eventsTotal) > Number(summary.eventsTotal), 'the log keeps growing across runs');
    const revenueAgain = again.processors.find((p: { name: string }) => p.name === 'revenue-by-customer-day');
    assert.ok(Number(revenueAgain.processed) > Number(revenue.processed), 'continued from its checkpoint');
  });

  it('refuses a bad flag with one line and exit 2', async () => {
    const result = await startDemo(['--rate', 'fast']);
    assert.equal(result.code, 2);
    assert.equal(
      result.stderr.trim(),
      'outbatch demo: --rate "fast" is invalid: expected a whole number from 0 to 1000000',
    );
  });

  it('`outbatch demo` from an installed package says where the demo is', async () => {
    const result = await runCli(['demo', '--duration', '5']);
    assert.equal(result.code, 2);
    assert.match(result.stderr.trim(), /^outbatch: the demo runs from a checkout .*npm start/);
    assert.equal(result.stderr.trim().split('\n').length, 1);
  });
});
