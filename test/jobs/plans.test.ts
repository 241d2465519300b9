/**
 * The statements that settle claimed jobs by id find them by primary key, whatever the
 * statistics say. With statistics taken while few jobs ran (autovacuum's usual view), the
 * planner estimated a worker's doing jobs at one row and scanned all of them through the
 * partial index `jobs_doing` for every batch: 320 ms per 1,000 completions with 50,000
 * claimed, and completions fell 30 s behind a 100,000-job backlog. Checked by the index
 * each statement used (pg_stat_get_xact_numscans), under generic plans, as a prepared
 * statement runs after its fifth execution.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { completeInTransaction, completeJobs } from '../../src/jobs/complete.js';
import { failJobs, failUnrecordable } from '../../src/jobs/fail.js';
import { releaseJobs } from '../../src/jobs/release.js';
import { isolatedApp, type TestApp } from '../helpers.js';

const WORKER = 'w-plans';
const JOBS = 20_000;
const CLAIMED = 10_000;

let t: TestApp;
before(async () => {
  t = await isolatedApp('job_plans');
  const q = `"${t.schema}"`;
  await t.pool.query(`INSERT INTO ${q}.jobs (task, args) SELECT 'plans', '{}' FROM generate_series(1, $1)`, [
    JOBS,
  ]);
  await t.pool.query(`ANALYZE ${q}.jobs`); // nothing doing yet: the statistics the trap needs
  await t.pool.query(
    `UPDATE ${q}.jobs SET status = 'doing', worker_id = $1, attempts = 1
     WHERE id IN (SELECT id FROM ${q}.jobs ORDER BY id LIMIT $2)`,
    [WORKER, CLAIMED],
  );
});
after(async () => t.cleanup());

/** Claimed job ids, taken from the end of the claimed range so each case gets its own. */
let next = CLAIMED;
async function claimedIds(count: number): Promise<string[]> {
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT j.id::text FROM "${t.schema}".jobs j ORDER BY j.id OFFSET $1 LIMIT $2`,
    [next - count, count],
  );
  next -= count;
  return rows.map((row) => row.id);
}

/** Runs `body` with generic plans in a transaction; returns its result and the scans of jobs_doing. */
async function scansOf<T>(
  body: (client: pg.PoolClient) => Promise<T>,
): Promise<{ result: T; doingScans: number }> {
  const client = await t.pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('SET LOCAL plan_cache_mode = force_generic_plan');
    const result = await body(client);
    const { rows } = await client.query<{ scans: string }>(
      'SELECT pg_stat_get_xact_numscans(to_regclass($1)) AS scans',
      [`"${t.schema}".jobs_doing`],
    );
    await client.query('COMMIT');
    return { result, doingScans: Number(rows[0]?.scans) };
  } finally {
    client.release(true); // its prepared statements were planned under the setting above
  }
}

describe('settling claimed jobs by id never scans the worker’s doing jobs', () => {
  it('a batch of completions, deleted and kept', async () => {
    const ids = await claimedIds(200);
    const completions = ids.map((id, i) => ({
      id,
      attempt: 1,
      task: 'plans',
      durationMs: 1,
      keepForMs: i % 2 === 0 ? null : 60_000,
    }));
    const { result, doingScans } = await scansOf((c) => completeJobs(c, t.schema, WORKER, completions, null));
    assert.equal(result, 200);
    assert.equal(doingScans, 0);
  });

  it('a batch of completions whose claims are not the current ones settles nothing', async () => {
    const ids = await claimedIds(3);
    const stale = ids.map((id) => ({ id, attempt: 2, task: 'plans', durationMs: 1, keepForMs: null }));
    const { result, doingScans } = await scansOf((c) => completeJobs(c, t.schema, WORKER, stale, null));
    assert.equal(result, 0);
    assert.equal(doingScans, 0);
  });

  it('a completion inside the job’s transaction', async () => {
    const [id] = await claimedIds(1);
    const completion = { id: id!, attempt: 1, task: 'plans', durationMs: 1, keepForMs: null };
    const { result, doingScans } = await scansOf((c) =>
      completeInTransaction(c, t.schema, WORKER, completion, null),
    );
    assert.equal(result, true);
    assert.equal(doingScans, 0);
  });

  it('a batch of failures, retried and dead-lettered', async () => {
    const ids = await claimedIds(100);
    const failures = ids.map((id, i) => ({
      id,
      attempt: 1,
      error: { message: 'boom', attempt: 1, at: new Date().toISOString(), worker: WORKER },
      retryInMs: i % 2 === 0 ? 1_000 : null,
    }));
    const { result, doingScans } = await scansOf((c) => failJobs(c, t.schema, WORKER, failures, null));
    assert.equal(result.length, 100);
    assert.equal(doingScans, 0);
  });

  it('an outcome that could not be recorded', async () => {
    const [id] = await claimedIds(1);
    const { result, doingScans } = await scansOf((c) =>
      failUnrecordable(c, t.schema, WORKER, id!, 1, 'outcome could not be recorded', null),
    );
    assert.equal(result, true);
    assert.equal(doingScans, 0);
  });

  it('jobs given back at shutdown', async () => {
    const ids = await claimedIds(100);
    const { result, doingScans } = await scansOf((c) =>
      releaseJobs(
        c,
        t.schema,
        WORKER,
        ids.map((id) => ({ id, attempt: 1 })),
      ),
    );
    assert.deepEqual(result, { released: 100, superseded: 0 });
    assert.equal(doingScans, 0);
  });
});
