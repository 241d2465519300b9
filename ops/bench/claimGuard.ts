/**
 * The plain claim with and without the limited-queue guard (schema/032, src/jobs/claim.ts),
 * A/B on one connection and one backlog, interleaved, each claim rolled back so every run
 * claims the same jobs: what "unused limits cost nothing" means, measured without the
 * noise of a whole worker. Reports the median and p90 per claim, in ms.
 *
 *   DATABASE_URL=postgres://... npx tsx ops/bench/claimGuard.ts [--backlog 100000] [--limit 100] [--rounds 400]
 */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createApp } from '../../src/app.js';
import { claimStatement } from '../../src/jobs/claim.js';

const { values: flags } = parseArgs({
  options: {
    backlog: { type: 'string', default: '100000' },
    limit: { type: 'string', default: '100' },
    rounds: { type: 'string', default: '400' },
  },
});
const url = process.env.DATABASE_URL;
if (!url) throw new Error('set DATABASE_URL to the PostgreSQL to benchmark against');
const schema = `bench_guard_${process.pid}`;
const app = createApp({ databaseUrl: url, schema });
await app.migrate();
const client = new pg.Client({ connectionString: url });
await client.connect();
try {
  await client.query(`SET jit = off`);
  await client.query(
    // Two queues, as most installs have a few: the planner's guess for a queue condition
    // depends on how many distinct queues the statistics saw.
    `INSERT INTO ${schema}.jobs (task, queue) SELECT 'noop', CASE WHEN g % 2 = 0 THEN 'default' ELSE 'mail' END
     FROM generate_series(1, $1::int) g`,
    [Number(flags.backlog)],
  );
  await client.query(`VACUUM ANALYZE ${schema}.jobs`);
  // The plain claim as the worker sends it (claim.ts), and the same without the guard.
  const withGuard = claimStatement(schema);
  const guardLine = /\n\s*AND NOT \(j\.queue = ANY \(\(SELECT coalesce\(array_agg\(l\.queue\)[^\n]*/;
  if (!guardLine.test(withGuard))
    throw new Error('claimGuard: the claim statement has no limited-queue guard to leave out');
  const claim = (guard: boolean) => (guard ? withGuard : withGuard.replace(guardLine, ''));
  const times: Record<string, number[]> = { without: [], with: [] };
  const params = [null, Number(flags.limit), 'bench', null, []];
  for (let round = 0; round < Number(flags.rounds); round += 1) {
    for (const guard of round % 2 === 0 ? [false, true] : [true, false]) {
      await client.query('BEGIN');
      const started = performance.now();
      await client.query({ name: `claim_${guard}`, text: claim(guard), values: params });
      times[guard ? 'with' : 'without']!.push(performance.now() - started);
      await client.query('ROLLBACK');
    }
  }
  const stat = (values: number[], q: number) =>
    [...values].sort((a, b) => a - b)[Math.floor(values.length * q)]!;
  process.stdout.write(
    `backlog ${flags.backlog}, claims of ${flags.limit}, ${flags.rounds} rounds, interleaved\n| claim | median ms | p90 ms |\n|---|---:|---:|\n`,
  );
  for (const [name, values] of Object.entries(times)) {
    process.stdout.write(
      `| ${name} the guard | ${stat(values, 0.5).toFixed(3)} | ${stat(values, 0.9).toFixed(3)} |\n`,
    );
  }
} finally {
  await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await client.end();
  await app.close();
}
