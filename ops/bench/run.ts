/**
 * `npm run bench`: every benchmark in turn against DATABASE_URL (the machine's
 * PostgreSQL, or `outbatch db start`'s). Each prints its figures; RESULTS.md records
 * them by hand with the date and the machine. Run one alone with
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
const names = ['events', 'jobs', 'processors', 'dashboard'].filter((name) =>
  fs.existsSync(path.join(here, `${name}.ts`)),
);
let failed = 0;
for (const name of names) {
  process.stdout.write(`\n== ${name} ==\n`);
  const result = spawnSync(
    process.execPath,
    ['--import', 'tsx', path.join(here, `${name}.ts`), ...process.argv.slice(2)],
    {
      stdio: 'inherit',
    },
  );
  if (result.status !== 0) failed += 1;
}
process.exit(failed === 0 ? 0 : 1);
