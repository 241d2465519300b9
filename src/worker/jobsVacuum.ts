/**
 * The worker's vacuum of the jobs table during a burst (src/jobs/vacuum.ts says why): it
 * counts the jobs it claims, and every CHECK_EVERY of them reads the table's statistics; once
 * the dead rows that appeared since its last vacuum are at least `vacuumJobsAfter`, and at
 * least a tenth of the live rows, it runs one VACUUM on a control connection. Workers share the
 * work: a VACUUM already running (another worker's, autovacuum's) makes theirs a no-op.
 *
 * Dead rows a vacuum could not remove (an old transaction still sees them: a long `ctx.tx`, a
 * pg_dump, a lagging replica with hot_standby_feedback) stay counted as dead, so each vacuum's
 * leftover is the next one's baseline: without it every look ran another full VACUUM that
 * freed nothing.
 *
 * A vacuum is cancelled when the worker stops (its shutdown does not wait for it) and after
 * VACUUM_TIMEOUT_MS: on a direct connection with pg_cancel_backend, behind a pooler (whose
 * backend ids are its own) by closing the connection.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { isBehindPooler } from '../db/pooler.js';
import { jobsTableRows, mayVacuumJobs, vacuumJobsStatement } from '../jobs/vacuum.js';

/** Jobs claimed between two looks at the statistics: a look per 10k jobs costs nothing. */
const CHECK_EVERY = 10_000;
/** A VACUUM is given this long; a table that takes longer is left to autovacuum. */
const VACUUM_TIMEOUT_MS = 10 * 60_000;

export interface JobsVacuum {
  /** This worker claimed `count` jobs. */
  claimed(count: number): void;
  /** No more vacuums; one in flight is cancelled and awaited (briefly). */
  stop(): Promise<void>;
}

export interface JobsVacuumOptions {
  /** Claimed jobs between two looks (tests look at once). */
  checkEvery?: number;
}

export function makeJobsVacuum(
  control: pg.Pool,
  schema: string,
  log: Logger,
  afterDead: number | null,
  options: JobsVacuumOptions = {},
): JobsVacuum {
  const checkEvery = options.checkEvery ?? CHECK_EVERY;
  let sinceCheck = 0;
  let inFlight: Promise<void> | undefined;
  let vacuuming: pg.PoolClient | undefined;
  let allowed: boolean | undefined;
  let stopped = false;
  // Dead rows left by this worker's last vacuum (see the header).
  let baseline = 0;

  async function cancel(client: pg.PoolClient, why: string): Promise<void> {
    log.info(`cancelling the vacuum of the jobs table: ${why}`);
    if (isBehindPooler(control)) {
      client.release(new Error(why)); // closes the connection; the pooler ends the statement
      vacuuming = undefined;
      return;
    }
    // pg sets processID from the server's BackendKeyData; its types do not list it.
    const pid = (client as unknown as { processID: number }).processID;
    await control.query('SELECT pg_cancel_backend($1)', [pid]).catch((error: unknown) => {
      log.warn({ err: error }, 'cancelling the vacuum failed; closing its connection');
      client.release(new Error(why));
      vacuuming = undefined;
    });
  }

  async function vacuum(): Promise<{ ran: boolean; ms: number }> {
    const client = await control.connect();
    vacuuming = client;
    const started = performance.now();
    const deadline = setTimeout(() => {
      void cancel(client, `still running after ${VACUUM_TIMEOUT_MS / 60_000} minutes`);
    }, VACUUM_TIMEOUT_MS);
    try {
      const before = await jobsTableRows(client, schema);
      if (stopped) return { ran: false, ms: 0 };
      // query_timeout per query (pg reads it from the config, its types do not list it):
      // the control pool's deadline is for statements of milliseconds; this one has its own.
      const query = { text: vacuumJobsStatement(schema), query_timeout: VACUUM_TIMEOUT_MS + 60_000 };
      await client.query(query as pg.QueryConfig);
      const after = await jobsTableRows(client, schema);
      baseline = after.dead;
      return { ran: after.vacuums > before.vacuums, ms: Math.round(performance.now() - started) };
    } finally {
      clearTimeout(deadline);
      if (vacuuming === client) client.release();
      vacuuming = undefined;
    }
  }

  async function checkAndVacuum(): Promise<void> {
    allowed ??= await mayVacuumJobs(control, schema);
    if (!allowed) {
      log.info(
        'the jobs table is not vacuumed by the workers: this role may not (the table’s or the database’s owner, or autovacuum, must)',
      );
      afterDead = null;
      return;
    }
    const rows = await jobsTableRows(control, schema);
    // A vacuum by someone else (autovacuum, another worker, a DBA) can leave fewer.
    baseline = Math.min(baseline, rows.dead);
    const fresh = rows.dead - baseline;
    if (afterDead === null || stopped || fresh < afterDead || fresh < rows.live / 10) return;
    const { ran, ms } = await vacuum();
    log.debug(
      { dead: rows.dead, live: rows.live, leftDead: baseline, ms },
      ran ? 'vacuumed the jobs table' : 'the jobs table was being vacuumed already; skipped',
    );
  }

  return {
    claimed(count) {
      if (afterDead === null || stopped) return;
      sinceCheck += count;
      if (sinceCheck < checkEvery || inFlight) return;
      sinceCheck = 0;
      inFlight = checkAndVacuum()
        .catch((error: unknown) => {
          if (!stopped) log.warn({ err: error }, 'vacuuming the jobs table failed; will try again');
        })
        .finally(() => {
          inFlight = undefined;
        });
    },
    async stop() {
      stopped = true;
      if (vacuuming) await cancel(vacuuming, 'the worker is stopping');
      await inFlight;
    },
  };
}
