/**
 * `npm test`: runs every test file with Node's test runner, in parallel processes.
 * With DATABASE_URL set the files use that server; without it one embedded server
 * is started for the whole run (each file still isolates itself in its own schema).
 *
 *   npm test                      all files
 *   npm test -- test/events       files under a folder, or named files
 *   OUTBATCH_TEST_CONCURRENCY=2   files run at once (default 4)
 *   OUTBATCH_TEST_SMOKE=1         only files whose first line is `// @smoke`
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { startEmbedded } from '../src/db/embedded.js';
import { createLogger } from '../src/log.js';

function testFiles(roots: string[]): string[] {
  const found: string[] = [];
  const walk = (entry: string) => {
    const stat = fs.statSync(entry);
    if (stat.isDirectory()) {
      for (const child of fs.readdirSync(entry).sort()) walk(path.join(entry, child));
    } else if (entry.endsWith('.test.ts')) {
      found.push(entry);
    }
  };
  for (const root of roots) walk(root);
  return found;
}

const args = process.argv.slice(2);
const smokeOnly = process.env.OUTBATCH_TEST_SMOKE === '1';
const files = testFiles(args.length > 0 ? args : ['test']).filter(
  (file) => !smokeOnly || fs.readFileSync(file, 'utf8').startsWith('// @smoke'),
);
if (files.length === 0) {
  process.stderr.write(`no test files under ${args.join(', ') || 'test'}\n`);
  process.exit(1);
}

const log = createLogger({ level: process.env.LOG_LEVEL ?? 'warn' });
let embedded: Awaited<ReturnType<typeof startEmbedded>> | undefined;
if (!process.env.DATABASE_URL) {
  embedded = await startEmbedded({ dataDir: path.join('.outbatch', 'test-pg'), log });
  process.stdout.write(`tests use the embedded PostgreSQL on port ${embedded.port}\n`);
}
const env = {
  ...process.env,
  DATABASE_URL: process.env.DATABASE_URL || embedded!.url,
  LOG_LEVEL: process.env.LOG_LEVEL ?? 'silent',
};

const concurrency = process.env.OUTBATCH_TEST_CONCURRENCY ?? '4';
const child = spawn(
  process.execPath,
  ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', ...files],
  { stdio: 'inherit', env },
);
// Ctrl-C reaches the test runner through the terminal; we only wait and clean up.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => child.kill('SIGTERM'));
const code: number = await new Promise((resolve) =>
  child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0))),
);
await embedded?.stop();
process.exit(code);
