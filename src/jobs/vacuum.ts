/**
 * Vacuuming the jobs table during a burst. Every claimed job leaves a dead row version
 * behind it (the claim's UPDATE) and every completed one another (the DELETE), and their
 * entries stay in jobs_claim until a VACUUM removes them. The claim walks jobs_claim from
 * its head, so past the dead entries of every job claimed since the last vacuum: half way
 * through a burn-down of 1M jobs, a claim read 4,200 index pages of them (20 ms) to find
 * 100 live rows, and throughput fell from 60k to 35k jobs/s by the end
 * (ops/bench/RESULTS.md, "The dead head of the claim index"). Autovacuum does not come in time:
 * it wakes once a minute (autovacuum_naptime) and waits for a fifth of the table to be dead,
 * and some servers run without it. So the workers vacuum the table themselves once enough of
 * it is dead.
 */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';

export interface JobsTableRows {
  live: number;
  dead: number;
  /** Manual VACUUMs of the table so far: one that was skipped (SKIP_LOCKED) does not count. */
  vacuums: number;
}

/** The statistics' live and dead row counts of the jobs table (a read of shared memory). */
export async function jobsTableRows(db: Queryable, schema: string): Promise<JobsTableRows> {
  const { rows } = await db.query<{ live: string; dead: string; vacuums: string }>(
    `SELECT n_live_tup AS live, n_dead_tup AS dead, vacuum_count AS vacuums FROM pg_stat_user_tables
     WHERE relid = to_regclass($1)`,
    [`${quoteSchema(schema)}.jobs`],
  );
  return {
    live: Number(rows[0]?.live ?? 0),
    dead: Number(rows[0]?.dead ?? 0),
    vacuums: Number(rows[0]?.vacuums ?? 0),
  };
}

/**
 * Whether this role may vacuum the jobs table: its owner (or a member of the owning role, or a
 * superuser), the database's owner, or from PostgreSQL 17 a holder of MAINTAIN on it. Anyone
 * else's VACUUM only warns and does nothing, so the worker asks once and then stays quiet.
 */
export async function mayVacuumJobs(db: Queryable, schema: string): Promise<boolean> {
  const { rows } = await db.query<{ may: boolean }>(
    `SELECT CASE
              WHEN pg_has_role(c.relowner, 'USAGE') THEN true
              WHEN pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')
                THEN true
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
 * The VACUUM of the jobs table, as light on the claims beside it as it can be:
 * - SKIP_LOCKED: another one holding the table (autovacuum, another worker) makes it a no-op,
 *   never a wait;
 * - PARALLEL 0: no parallel index workers, which on a small server took every core from the
 *   claims;
 * - TRUNCATE false: no ACCESS EXCLUSIVE lock at the end to give back the pages of a table
 *   emptied by a burn-down (claims, defers and outcomes would queue behind it, and a replica
 *   replaying it cancels its reads); the next burst reuses them.
 * Not in a transaction. The caller runs it on a connection of its own, to cancel it.
 */
export function vacuumJobsStatement(schema: string): string {
  return `VACUUM (SKIP_LOCKED, PARALLEL 0, TRUNCATE false) ${quoteSchema(schema)}.jobs`;
}
