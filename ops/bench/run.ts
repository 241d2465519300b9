/**
 * `npm run bench [-- --suite scale|processes|event-log|limits|peers|pgbouncer]`: the everyday
 * benchmarks in turn (or one suite) against DATABASE_URL (the machine's PostgreSQL, or
 * `outbatch db start`'s). Each prints its figures; RESULTS.md records them by hand with the
 * date and the machine; the scale suite also writes JSON and an SVG chart (scale.ts). Run one alone with
 * `npx tsx ops/bench/<name>.ts --help`-style flags (see each file's header).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
if (!process.env.DATABASE_URL) {
  process.stderr.write(
    'npm run bench: set DATABASE_URL (benchmarks compare systems on one server you choose)\n',
  );
  process.exit(2);
}
/**
 * `--suite <name>` picks what runs (default: the everyday suites in turn); the other
 * arguments go to each benchmark.
 */
const SUITES: Record<string, string[]> = {
  default: ['events', 'jobs', 'processors', 'dashboard'],
  scale: ['scale'],
  processes: ['processes'],
  'event-log': ['eventLog'],
  limits: ['limits'],
  peers: ['peers'],
  pgbouncer: ['pgbouncer'],
};
const args = process.argv.slice(2);
const at = args.indexOf('--suite');
const suite = at >= 0 ? args[at + 1] : 'default';
if (suite === undefined || !(suite in SUITES)) {
  process.stderr.write(
    `npm run bench: --suite ${JSON.stringify(suite)} is not a suite: expected one of ${Object.keys(SUITES).join(', ')}\n`,
  );
  process.exit(2);
}
const passed = at >= 0 ? [...args.slice(0, at), ...args.slice(at + 2)] : args;
const names = SUITES[suite]!.filter((name) => fs.existsSync(path.join(here, `${name}.ts`)));
let failed = 0;
for (const name of names) {
  process.stdout.write(`\n== ${name} ==\n`);
  const result = spawnSync(process.execPath, ['--import', 'tsx', path.join(here, `${name}.ts`), ...passed], {
    stdio: 'inherit',
  });
  if (result.status !== 0) failed += 1;
}
process.exit(failed === 0 ? 0 : 1);
