/**
 * The worker's progress writer: `ctx.progress` only records the latest value per claim in
 * memory; one statement every `throttleMs` writes every claim's latest value, so a job is
 * written at most once per `throttleMs` however often its handler reports, and nothing is
 * written (no round trip, no timer) while no handler reports. The last value a handler
 * reports is written at most `throttleMs` after it, also when the job has ended meanwhile
 * (on a kept row; a deleted row has nothing to show it on).
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { failureKind } from '../db/retryable.js';
import { type ProgressReport, writeProgress } from '../jobs/progress.js';

/** A report not written (its row locked by a completion, or the connection failing) is tried this often, then dropped. */
const MAX_TRIES = 5;

export interface ProgressWriter {
  report(report: ProgressReport): void;
  /** Writes what is pending once (at shutdown); a failure is logged. */
  close(): Promise<void>;
}

export function makeProgressWriter(deps: {
  pool: pg.Pool;
  schema: string;
  workerId: string;
  log: Logger;
  throttleMs: number;
}): ProgressWriter {
  const { pool, schema, workerId, log, throttleMs } = deps;
  // Keyed by claim (`<id>:<attempt>`): the latest report and how often it was tried.
  const pending = new Map<string, { report: ProgressReport; tries: number }>();
  let timer: NodeJS.Timeout | undefined;
  let writing: Promise<void> | undefined;
  let closed = false;

  function schedule(): void {
    if (timer || writing || closed || pending.size === 0) return;
    timer = setTimeout(() => {
      timer = undefined;
      writing = flush().finally(() => {
        writing = undefined;
        schedule();
      });
    }, throttleMs);
  }

  async function flush(): Promise<void> {
    const batch = [...pending.entries()];
    pending.clear();
    let written: Set<string>;
    try {
      written = new Set(
        await writeProgress(
          pool,
          schema,
          workerId,
          batch.map(([, entry]) => entry.report),
        ),
      );
    } catch (error) {
      if (failureKind(error) === 'refused') {
        log.warn({ err: error, jobs: batch.length }, 'progress reports were refused; dropped');
        return;
      }
      log.warn({ err: error, jobs: batch.length }, 'writing progress reports failed; trying again');
      written = new Set();
    }
    // Not written: the row was locked (a completion in flight), gone, or no longer this
    // claim's; or the connection failed. Tried again unless a newer report replaced it.
    for (const [key, entry] of batch) {
      if (written.has(entry.report.id) || pending.has(key) || entry.tries + 1 >= MAX_TRIES) continue;
      pending.set(key, { report: entry.report, tries: entry.tries + 1 });
    }
  }

  return {
    report(report) {
      pending.set(`${report.id}:${report.attempt}`, { report, tries: 0 });
      schedule();
    },
    async close() {
      closed = true;
      clearTimeout(timer);
      timer = undefined;
      await writing;
      if (pending.size > 0)
        await flush().catch((error) => log.warn({ err: error }, 'writing progress failed'));
    },
  };
}
