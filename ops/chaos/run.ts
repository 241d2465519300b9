/**
 * `npm run chaos`: the kill test, the database restart, the soak and the fault test, one after the other
 * (each is its own process; sizes from the same CHAOS_* variables). Exits non-zero if any failed.
 * Never part of `npm test`: the full sizes take many minutes and the restart takes the server down.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { ROOT } from './support.js';

const scenarios = (process.env.CHAOS_SCENARIOS ?? 'kill,restart,soak,faults').split(',');
const failed: string[] = [];
for (const name of scenarios) {
  console.log(`\n=== chaos:${name} ===`);
  const result = spawnSync(
    process.execPath,
    ['--import', 'tsx', path.join(ROOT, 'ops', 'chaos', `${name}.ts`)],
    {
      cwd: ROOT,
      stdio: 'inherit',
    },
  );
  if (result.status !== 0) failed.push(name);
}
console.log(failed.length === 0 ? '\nchaos: every scenario passed' : `\nchaos: failed: ${failed.join(', ')}`);
process.exitCode = failed.length === 0 ? 0 : 1;
