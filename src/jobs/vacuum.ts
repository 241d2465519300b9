/**
 * Vacuuming the jobs table during a burst. Every claimed job leaves a dead row version
 * behind it (the claim's UPDATE) and every completed one another (the DELETE), and their
 * entries stay in jobs_claim until a VACUUM removes them. The claim walks jobs_claim from
 * its head, so past the dead entries of every job claimed since the last vacuum: half way
 * through a burn-down of 1M jobs, a claim read 4,200 index pages of them (20 ms) to find
 * 100 live rows, and throughput fell from 60k to 35k jobs/s by the end
 * (ops/bench/RESULTS.md, "The dead head of jobs_claim"). Autovacuum does not come in time:
 * it wakes once a minute (autovacuum_naptime) and waits for a fifth of the table to be dead,
 * and some servers run without it. So the workers vacuum the table themselves once enough of
 * it is dead.
 */
import type pg from 'pg';
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';

export interface JobsTableRows {
  live: number;
  dead: number;
}

/** The statistics' live and dead row counts of the jobs table (a read of shared memory). */
export async function jobsTableRows(db: Queryable, schema: string): Promise<JobsTableRows> {
  const { rows } = await db.query<{ live: string; dead: string }>(
    `SELECT n_live_tup AS live, n_dead_tup AS dead FROM pg_stat_user_tables
     WHERE relid = to_regclass($1)`,
    [`${quoteSchema(schema)}.jobs`],
  );
  return { live: Number(rows[0]?.live ?? 0), dead: Number(rows[0]?.dead ?? 0) };
}

/**
 * Whether this role may vacuum the jobs table: its owner (or a member of the owning role,
 * or a superuser), or from PostgreSQL 17 a holder of MAINTAIN on it. Anyone else's VACUUM
 * only warns and does nothing, so the worker asks once and then stays quiet.
 */
export async function mayVacuumJobs(db: Queryable, schema: string): Promise<boolean> {
  const { rows } = await db.query<{ may: boolean }>(
    `SELECT CASE
              WHEN pg_has_role(c.relowner, 'USAGE') THEN true
              WHEN current_setting('server_version_num')::int >= 170000
                THEN has_table_privilege(c.oid, 'MAINTAIN')
              ELSE false
            END AS may
     FROM pg_class c WHERE c.oid = to_regclass($1)`,
    [`${quoteSchema(schema)}.jobs`],
  );
  return rows[0]?.may === true;
}

/**
 * VACUUM of the jobs table, skipped if another one (autovacuum, another worker) holds it:
 * one vacuum at a time is enough. Not in a transaction, so it takes a connection to itself.
 */
export async function vacuumJobs(db: pg.Pool, schema: string, timeoutMs: number): Promise<void> {
  // query_timeout per query (pg reads it from the config, its types do not list it): the
  // control pool's deadline is for statements of milliseconds.
  const query = { text: `VACUUM (SKIP_LOCKED) ${quoteSchema(schema)}.jobs`, query_timeout: timeoutMs };
  await db.query(query as pg.QueryConfig);
}
