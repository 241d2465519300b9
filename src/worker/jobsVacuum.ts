/**
 * The worker's vacuum of the jobs table during a burst (src/jobs/vacuum.ts says why): it
 * counts the jobs it claims, and every CHECK_EVERY of them reads the table's statistics; once
 * dead rows are at least `vacuumJobsAfter` and a tenth of the live ones, it runs one VACUUM
 * on the control pool. Workers share the work: a VACUUM already running (another worker's,
 * autovacuum's) makes theirs a no-op.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { jobsTableRows, mayVacuumJobs, vacuumJobs } from '../jobs/vacuum.js';

/** Jobs claimed between two looks at the statistics: a look per 10k jobs costs nothing. */
const CHECK_EVERY = 10_000;
/** A VACUUM is given this long; a table that takes longer is left to autovacuum. */
const VACUUM_TIMEOUT_MS = 10 * 60_000;

export interface JobsVacuum {
  /** This worker claimed `count` jobs. */
  claimed(count: number): void;
  /** Waits for a vacuum in flight (the pools must not close under it). */
  stop(): Promise<void>;
}

export function makeJobsVacuum(
  control: pg.Pool,
  schema: string,
  log: Logger,
  afterDead: number | null,
): JobsVacuum {
  let sinceCheck = 0;
  let inFlight: Promise<void> | undefined;
  let allowed: boolean | undefined;
  let stopped = false;

  async function checkAndVacuum(): Promise<void> {
    allowed ??= await mayVacuumJobs(control, schema);
    if (!allowed) {
      log.info(
        'the jobs table is not vacuumed by the workers: this role does not own it (its owner, or autovacuum, must)',
      );
      afterDead = null;
      return;
    }
    const rows = await jobsTableRows(control, schema);
    if (afterDead === null || rows.dead < afterDead || rows.dead < rows.live / 10) return;
    const started = performance.now();
    await vacuumJobs(control, schema, VACUUM_TIMEOUT_MS);
    log.debug(
      { dead: rows.dead, live: rows.live, ms: Math.round(performance.now() - started) },
      'vacuumed the jobs table',
    );
  }

  return {
    claimed(count) {
      if (afterDead === null || stopped) return;
      sinceCheck += count;
      if (sinceCheck < CHECK_EVERY || inFlight) return;
      sinceCheck = 0;
      inFlight = checkAndVacuum()
        .catch((error: unknown) =>
          log.warn({ err: error }, 'vacuuming the jobs table failed; will try again'),
        )
        .finally(() => {
          inFlight = undefined;
        });
    },
    async stop() {
      stopped = true;
      await inFlight;
    },
  };
}
