// @smoke
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { type CliResult, databaseUrl, ROOT, startProcess, uniqueSchema } from './helpers.js';

const schema = uniqueSchema('demo');
const shop = `${schema}_shop`;
after(async () => {
  const pool = new pg.Pool({ connectionString: databaseUrl() });
  await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE; DROP SCHEMA IF EXISTS "${shop}" CASCADE`);
  await pool.end();
});

/** `npm start -- ...args` as a user runs it; `onOutput` sees stdout and stderr so far. */
function startDemo(args: string[], onOutput: (output: string) => void = () => {}): Promise<CliResult> {
  return startProcess(
    process.execPath,
    ['--import', 'tsx', path.join(ROOT, 'pipelines', 'shop', 'start.ts'), ...args],
    {
      onOutput,
    },
  ).result;
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
});

describe('the demo from the published package (npx outbatch demo)', () => {
  // The tarball npm would publish (`npm pack` builds it first), unpacked beside this
  // checkout's node_modules (its dependencies, without a registry round trip).
  const dir = mkdtempSync(path.join(os.tmpdir(), 'outbatch-pack-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  let cli = '';
  before(async () => {
    const packed = await run('npm', ['pack', '--silent', '--pack-destination', dir], ROOT);
    assert.equal(packed.code, 0, packed.stderr);
    const unpacked = await run('tar', ['xzf', path.join(dir, packed.stdout.trim().split('\n').at(-1)!)], dir);
    assert.equal(unpacked.code, 0, unpacked.stderr);
    symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'package', 'node_modules'));
    const manifest = JSON.parse(readFileSync(path.join(dir, 'package', 'package.json'), 'utf8'));
    cli = path.join(dir, 'package', manifest.bin.outbatch);
  });

  it('runs the shop with the same options as npm start, from any folder', async () => {
    const packSchema = `${schema}_p`;
    after(async () => {
      const pool = new pg.Pool({ connectionString: databaseUrl() });
      await pool.query(
        `DROP SCHEMA IF EXISTS "${packSchema}" CASCADE; DROP SCHEMA IF EXISTS "${packSchema}_shop" CASCADE`,
      );
      await pool.end();
    });
    // outbatch's own --schema (before `demo`) and the demo's flags (after) both reach it.
    const result = await run(
      process.execPath,
      [
        cli,
        '--schema',
        packSchema,
        'demo',
        '--duration',
        '2',
        '--json',
        '--shop-schema',
        `${packSchema}_shop`,
      ],
      dir,
    );
    assert.equal(result.code, 0, result.stderr);
    const summary = JSON.parse(result.stdout);
    assert.ok(summary.appended > 0, result.stdout);
    const revenue = summary.processors.find((p: { name: string }) => p.name === 'revenue-by-customer-day');
    assert.equal(Number(revenue.processed), summary.appended);
  });

  it('passes --help and bad flags to the demo program: its usage, or one line and exit 2', async () => {
    const help = await run(process.execPath, [cli, 'demo', '--help'], dir);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^usage: outbatch demo \[options\]/);
    const bad = await run(process.execPath, [cli, 'demo', '--rate', 'fast'], dir);
    assert.equal(bad.code, 2);
    assert.equal(
      bad.stderr.trim(),
      'outbatch demo: --rate "fast" is invalid: expected a whole number from 0 to 1000000',
    );
  });
});

function run(command: string, args: string[], cwd: string): Promise<CliResult> {
  return startProcess(command, args, { cwd }).result;
}
