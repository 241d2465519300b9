/**
 * Schedules as the dashboard and the metrics show them: the stored definition, the next
 * tick, the last tick's outcome, and whether the schedule is late.
 */
import { Duration } from 'luxon';
import type { Queryable } from '../db/queryable.js';
import type { Schedule } from '../schedule/definition.js';
import { listSchedules } from '../schedule/store.js';
import { nextTicks } from '../schedule/ticks.js';

/**
 * `lateAfter` lives in code, not in the schedules table, so the dashboard uses the
 * default (1 minute) for every schedule.
 */
export const LATE_AFTER_MS = 60_000;
/** A schedule no scheduler has seen for this long was probably removed from code: never late. */
export const STALE_AFTER_MS = 24 * 3600_000;

export interface ScheduleView {
  name: string;
  kind: 'cron' | 'every';
  expression: string;
  timezone: string;
  task: string;
  lastTick: Date | null;
  lastEnqueuedAt: Date | null;
  lastJobId: string | null;
  /** The last tick's job state, or `done` once its row was deleted on success. */
  lastOutcome: string | null;
  nextTick: Date | null;
  /** How late the schedule is now: the overdue tick's age, or how late the last tick was enqueued. */
  latenessSeconds: number;
  late: boolean;
  stale: boolean;
}

function asSchedule(row: { name: string; kind: 'cron' | 'every'; expression: string; timezone: string }) {
  const schedule: Schedule = {
    name: row.name,
    kind: row.kind,
    expression: row.expression,
    timezone: row.timezone,
    lateAfterMs: LATE_AFTER_MS,
  };
  if (row.kind === 'every') schedule.everyMs = Duration.fromISO(row.expression).toMillis();
  return schedule;
}

/** A tick that cannot be computed (a row written by other code) shows as unknown, not as an error. */
function firstTickAfter(schedule: Schedule, after: Date): Date | null {
  try {
    if (schedule.kind === 'every' && !(schedule.everyMs! > 0)) return null;
    return nextTicks(schedule, after, 1)[0] ?? null;
  } catch {
    return null;
  }
}

export async function scheduleViews(db: Queryable, q: string, now = new Date()): Promise<ScheduleView[]> {
  const rows = await listSchedules(db, q);
  return rows.map((row) => {
    const schedule = asSchedule(row);
    const stale = now.getTime() - row.last_seen_at.getTime() > STALE_AFTER_MS;
    // The tick after the last one enqueued (or after first sight): if it is in the past, it is overdue.
    const due = firstTickAfter(schedule, row.last_tick ?? row.first_seen_at);
    const overdueMs = due ? Math.max(0, now.getTime() - due.getTime()) : 0;
    const lastLateMs = row.last_late_ms === null ? 0 : Number(row.last_late_ms);
    const latenessMs = Math.max(overdueMs, lastLateMs);
    return {
      name: row.name,
      kind: row.kind,
      expression: row.expression,
      timezone: row.timezone,
      task: row.task,
      lastTick: row.last_tick,
      lastEnqueuedAt: row.last_enqueued_at,
      lastJobId: row.last_job_id,
      lastOutcome: row.last_outcome,
      nextTick: firstTickAfter(schedule, now),
      latenessSeconds: latenessMs / 1000,
      late: !stale && latenessMs > LATE_AFTER_MS,
      stale,
    };
  });
}
