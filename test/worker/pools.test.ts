/**
 * The worker's own connections (src/worker/workerPools.ts): kept by the app from one run to
 * the next, ended by app.close(), and without JIT.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createApp } from '../../src/app.js';
import { createPool } from '../../src/db/connection.js';
import { claimStatement } from '../../src/jobs/claim.js';
import { silentLogger } from '../../src/log.js';
import { databaseUrl, isolatedApp, planNodeTypes, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('worker_pools');
});
after(async () => t.cleanup());

const FAST = { heartbeatInterval: 50, recoverInterval: 50, pollInterval: 50 };

/** Backends of this schema's worker control pool (their last statement names the schema). */
async function controlBackends(): Promise<Set<number>> {
  const { rows } = await t.pool.query<{ pid: number }>(
    `SELECT pid FROM pg_stat_activity WHERE application_name = 'outbatch-control' AND strpos(query, $1) > 0`,
    [`"${t.schema}"`],
  );
  return new Set(rows.map((row) => row.pid));
}

async function runOnce(app: TestApp['app'], concurrency = 10): Promise<Set<number>> {
  const controller = new AbortController();
  const running = app.run({ ...FAST, concurrency, signal: controller.signal });
  const seen = await waitFor('the worker to use its control connections', async () => {
    const pids = await controlBackends();
    return pids.size >= 2 ? pids : undefined;
  });
  controller.abort();
  await running;
  return seen;
}

describe('the worker’s connections', () => {
  it('are kept by the app for its next run (the control pool even at another concurrency), and closed with the app', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    app.task('pools-noop', {}, async () => {});
    const first = await runOnce(app);
    const second = await runOnce(app, 3);
    const reused = [...second].filter((pid) => first.has(pid));
    assert.ok(
      reused.length > 0,
      `no control connection of the first run was used again (${[...first]} / ${[...second]})`,
    );
    await app.close();
    await waitFor('the kept connections to close', async () => {
      const open = await t.pool.query('SELECT 1 FROM pg_stat_activity WHERE pid = ANY ($1::int[])', [
        [...first, ...second],
      ]);
      return open.rowCount === 0;
    });
  });

  it('claim by walking jobs_claim with statistics taken while the queue was empty, not by sorting the backlog', async () => {
    // The table vacuumed empty, then a burst of defers, before anything analyzes it: the
    // planner estimated ~100 due jobs and sorted all 200k on disk for each claim (16k jobs/s
    // instead of 80k; ops/bench/RESULTS.md). The control pool's connections run without sorts
    // where an index gives the order.
    const q = `"${t.schema}"`;
    await t.pool.query(`DELETE FROM ${q}.jobs`);
    await t.pool.query(`VACUUM ${q}.jobs`);
    await t.pool.query(
      `INSERT INTO ${q}.jobs (task, args) SELECT 'burst', jsonb_build_object('i', i) FROM generate_series(1, 20000) i`,
    );
    const plan = async (pool: ReturnType<typeof createPool>) => {
      const client = await pool.connect();
      try {
        await client.query('SET plan_cache_mode = force_generic_plan');
        await client.query(`PREPARE claim(text[], int, text, timestamptz, text[]) AS ${claimStatement(q)}`);
        const { rows } = await client.query(
          `EXPLAIN (FORMAT JSON) EXECUTE claim(NULL, 1000, 'w', NULL, '{}')`,
        );
        return planNodeTypes(rows);
      } finally {
        client.release();
      }
    };
    const control = createPool(databaseUrl(), silentLogger(), { max: 1, jit: false, sort: false });
    try {
      assert.equal((await control.query('SHOW enable_sort')).rows[0].enable_sort, 'off');
      const nodes = await plan(control);
      assert.ok(!nodes.includes('Sort'), `plan: ${nodes.join(' > ')}`);
      assert.ok(nodes.includes('Index Scan'), `plan: ${nodes.join(' > ')}`);
    } finally {
      await control.end();
      await t.pool.query(`DELETE FROM ${q}.jobs`);
    }
  });

  it('run without JIT on the control pool', async () => {
    const pool = createPool(databaseUrl(), silentLogger(), { max: 1, jit: false });
    try {
      assert.equal((await pool.query('SHOW jit')).rows[0].jit, 'off');
    } finally {
      await pool.end();
    }
  });
});
