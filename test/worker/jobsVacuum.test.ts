/**
 * The worker's vacuum of the jobs table during a burst (src/worker/jobsVacuum.ts): a busy
 * worker runs VACUUM once enough of the table is dead, never when told not to, not again and
 * again while an old transaction keeps the dead rows, never in the way of a stop, and a role
 * that may not vacuum is found out without a failed statement.
 *
 * The table's autovacuum is off here (the embedded server runs it), so every vacuum counted
 * is the worker's, and dead rows are made and seen in the statistics before a worker looks.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { ValidationError } from '../../src/errors.js';
import { jobsTableRows, mayVacuumJobs } from '../../src/jobs/vacuum.js';
import { silentLogger } from '../../src/log.js';
import { makeJobsVacuum } from '../../src/worker/jobsVacuum.js';
import { resolveWorkerOptions } from '../../src/worker/options.js';
import { databaseUrl, isolatedApp, runCli, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('jobs_vacuum');
  await t.pool.query(`ALTER TABLE "${t.schema}".jobs SET (autovacuum_enabled = false)`);
});
after(async () => t.cleanup());

const FAST = { heartbeatInterval: 50, recoverInterval: 50, pollInterval: 50 };
// More than the 10,000 claimed jobs between two looks at the statistics.
const JOBS = 40_000;

/** Manual vacuums of this schema's jobs table (autovacuum's are counted apart). */
async function vacuums(): Promise<number> {
  const { rows } = await t.pool.query<{ n: string }>(
    'SELECT vacuum_count AS n FROM pg_stat_user_tables WHERE relid = to_regclass($1)',
    [`"${t.schema}".jobs`],
  );
  return Number(rows[0]?.n ?? 0);
}

/** Makes `n` dead rows (jobs deferred and deleted) and waits until the statistics show them. */
async function deadRows(n: number): Promise<void> {
  const before = await jobsTableRows(t.pool, t.schema);
  await t.pool.query(
    `INSERT INTO "${t.schema}".jobs (task, args) SELECT 'dead', '{}' FROM generate_series(1, $1)`,
    [n],
  );
  await t.pool.query(`DELETE FROM "${t.schema}".jobs WHERE task = 'dead'`);
  await waitFor(`${n} more dead rows in the statistics`, async () => {
    const now = await jobsTableRows(t.pool, t.schema);
    return now.dead >= before.dead + n;
  });
}

/** Defers JOBS no-op jobs, runs them all once with these options, and checks each ran once. */
async function burn(task: string, options: { vacuumJobsAfter?: number | false }): Promise<void> {
  const ran = new Map<number, number>();
  const noop = t.app.task(task, {}, async (args: { n: number }) => {
    ran.set(args.n, (ran.get(args.n) ?? 0) + 1);
  });
  for (let i = 0; i < JOBS; i += 5_000) {
    await noop.deferMany(Array.from({ length: 5_000 }, (_, k) => ({ args: { n: i + k } })));
  }
  const controller = new AbortController();
  const running = t.app.run({ ...FAST, ...options, signal: controller.signal });
  await waitFor(`${JOBS} jobs to run`, async () => ran.size === JOBS, 120_000);
  controller.abort();
  await running;
  assert.deepEqual(
    [...ran.values()].filter((n) => n !== 1),
    [],
    'every job ran exactly once',
  );
  const left = await t.pool.query(`SELECT count(*)::int AS n FROM "${t.schema}".jobs`);
  assert.equal(left.rows[0].n, 0);
}

describe('the worker’s vacuum of the jobs table', () => {
  it('is not run with vacuumJobsAfter: false', async () => {
    const before = await vacuums();
    await burn('vacuum-off', { vacuumJobsAfter: false });
    assert.equal(await vacuums(), before);
  });

  it('is run by a busy worker once enough of the table is dead, and every job still runs once', async () => {
    await deadRows(20_000);
    const before = await vacuums();
    await burn('vacuum-on', { vacuumJobsAfter: 1_000 });
    await waitFor('a vacuum of the jobs table', async () => (await vacuums()) > before);
  });

  it('is not run again while an old transaction keeps the dead rows it could not remove', async () => {
    const holder = new pg.Client({ connectionString: databaseUrl() });
    await holder.connect();
    const vacuum = makeJobsVacuum(t.pool, t.schema, silentLogger(), 1_000, { checkEvery: 1 });
    try {
      await holder.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await holder.query('SELECT 1'); // holds a snapshot: no row deleted from now on can go
      await deadRows(5_000);
      const first = await vacuums();
      vacuum.claimed(1);
      await waitFor('the first vacuum', async () => (await vacuums()) > first);
      await new Promise((resolve) => setTimeout(resolve, 200)); // its leftover read after it
      // The dead rows are all still there, and nothing new died: look four more times.
      for (let i = 0; i < 4; i += 1) {
        vacuum.claimed(1);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      await vacuum.stop();
      assert.equal(await vacuums(), first + 1, 'one vacuum, not one per look');
    } finally {
      await vacuum.stop();
      await holder.query('ROLLBACK');
      await holder.end();
    }
  });

  it('is cancelled, not waited for, when the worker stops', async () => {
    // A pool whose VACUUM crawls: every page costs a 100 ms nap.
    const slow = new pg.Pool({
      connectionString: databaseUrl(),
      max: 3,
      options: '-c vacuum_cost_delay=100 -c vacuum_cost_limit=1',
    });
    const vacuum = makeJobsVacuum(slow, t.schema, silentLogger(), 1_000, { checkEvery: 1 });
    try {
      await deadRows(20_000);
      const before = await vacuums();
      vacuum.claimed(1);
      const running = async () => {
        const { rows } = await t.pool.query(
          `SELECT pid FROM pg_stat_activity WHERE query LIKE 'VACUUM%' AND strpos(query, $1) > 0 AND state = 'active'`,
          [`"${t.schema}".jobs`],
        );
        return rows.length;
      };
      await waitFor('the vacuum to run', async () => (await running()) > 0);
      await vacuum.stop(); // a hang here is the failure (the test's timeout)
      await waitFor('no vacuum left on the server', async () => (await running()) === 0);
      assert.equal(await vacuums(), before, 'the vacuum was cancelled, not finished');
    } finally {
      await vacuum.stop();
      await slow.end();
    }
  });

  it('is not tried by a role that may not vacuum the table', async () => {
    const role = `${t.schema}_reader`;
    const client = new pg.Client({ connectionString: databaseUrl() });
    await client.connect();
    try {
      assert.equal(await mayVacuumJobs(client, t.schema), true, 'the owner may');
      await client.query(`CREATE ROLE "${role}"`);
      await client.query(`GRANT USAGE ON SCHEMA "${t.schema}" TO "${role}"`);
      await client.query(`SET ROLE "${role}"`);
      assert.equal(await mayVacuumJobs(client, t.schema), false, 'another role may not');
    } finally {
      await client.query('RESET ROLE');
      await client.query(`REVOKE USAGE ON SCHEMA "${t.schema}" FROM "${role}"`);
      await client.query(`DROP ROLE IF EXISTS "${role}"`);
      await client.end();
    }
  });

  it('refuses a bad threshold with one line naming it', async () => {
    for (const bad of [0, -5, 1.5, '100' as unknown as number]) {
      assert.throws(
        () => resolveWorkerOptions({ vacuumJobsAfter: bad }),
        (error: Error) =>
          error instanceof ValidationError &&
          error.message.startsWith('vacuumJobsAfter') &&
          !error.message.includes('\n'),
      );
    }
    const cli = await runCli(['worker', '--app', 'none.js', '--vacuum-jobs-after', 'lots']);
    assert.notEqual(cli.code, 0);
    assert.match(
      cli.stderr,
      /--vacuum-jobs-after "lots" is invalid: expected a whole number of dead rows, or off/,
    );
  });
});
