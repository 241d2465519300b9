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
  const claim = (guard: boolean) => `WITH picked AS (
       SELECT j.id FROM ${schema}.jobs j
       WHERE j.status = 'todo'
         AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
         AND j.run_at <= coalesce($4::timestamptz, now())
         AND ($1::text[] IS NULL OR j.queue = ANY ($1::text[]))
         AND NOT (j.task = ANY ($5::text[]))
         AND (j.lock IS NULL OR (
           NOT EXISTS (SELECT 1 FROM ${schema}.jobs d WHERE d.lock = j.lock AND d.status = 'doing')
           AND NOT EXISTS (
             SELECT 1 FROM ${schema}.jobs e
             WHERE e.lock = j.lock AND e.status = 'todo' AND e.id < j.id
               AND e.run_at <= coalesce($4::timestamptz, now()))))
       ORDER BY j.priority DESC, j.run_at, j.id
       LIMIT $2
       FOR UPDATE SKIP LOCKED
     )
     UPDATE ${schema}.jobs j
     SET status = 'doing', attempts = j.attempts + 1, worker_id = $3,
         started_at = coalesce($4::timestamptz, now()), updated_at = coalesce($4::timestamptz, now())
     WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
       ${guard ? `AND NOT (j.queue = ANY ((SELECT coalesce(array_agg(l.queue), '{}') FROM ${schema}.queue_limits l)::text[]))` : ''}
     RETURNING j.id::text, j.task, j.queue, j.args, j.attempts, j.max_attempts, j.priority, j.lock,
               j.queueing_lock, (extract(epoch FROM j.run_at) * 1000)::float8 AS run_at_ms,
               (extract(epoch FROM j.created_at) * 1000)::float8 AS created_at_ms`;
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
