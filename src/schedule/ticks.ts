/**
 * Tick arithmetic, free of I/O: which ticks fall in a period, and which missed ticks
 * a scheduler should still enqueue. Every process computes the same ticks, so the
 * database's unique (schedule, tick) row is all it takes to enqueue each once.
 */
import { CronExpressionParser } from 'cron-parser';
import { DateTime } from 'luxon';
import type { Schedule } from './definition.js';

/**
 * DST rule (Vixie cron's): when clocks go back, a wall time that happens twice fires
 * once, at its first occurrence — unless the expression runs every hour, which keeps
 * running every real hour. When clocks go forward, a wall time that does not exist
 * fires at the same minute of the next hour (cron-parser's shift: 02:30 -> 03:30).
 * cron-parser alone answers differently depending on where iteration starts, so the
 * rule is applied here and every process computes the same ticks for any period.
 */
function skipsRepeatedWallTimes(schedule: Schedule): boolean {
  const cron = CronExpressionParser.parse(schedule.expression, {
    tz: schedule.timezone,
    hashSeed: schedule.name,
  });
  return cron.fields.hour.values.length < 24;
}

function isRepeatedWallTime(t: number, zone: string): boolean {
  const at = DateTime.fromMillis(t, { zone });
  const delta = DateTime.fromMillis(t - 3 * 3600_000, { zone }).offset - at.offset; // minutes; > 0 after a fall-back
  if (delta <= 0) return false;
  const earlier = DateTime.fromMillis(t - delta * 60_000, { zone });
  const format = 'yyyy-MM-dd HH:mm:ss';
  return earlier.toFormat(format) === at.toFormat(format);
}

/** Longer than any clocks-forward gap (an hour, 30 minutes on Lord Howe). */
const GAP_LOOKBACK_MS = 3 * 3600_000;

/**
 * Where cron iteration starts for ticks after `after`. cron-parser shifts a skipped wall time
 * (02:02 -> 03:02) only when its iteration crosses the gap, so a period starting just after
 * a clocks-forward change lost the shifted ticks that a period starting before it had: the
 * ticks depended on how the scheduler cut time (found by the cron property test). After a
 * change that went forward within the lookback, iteration starts before it; the ticks up
 * to `after` are dropped below.
 */
function iterationStart(after: Date, zone: string | undefined): Date {
  const before = new Date(after.getTime() - GAP_LOOKBACK_MS);
  const wentForward =
    DateTime.fromJSDate(after, { zone }).offset > DateTime.fromJSDate(before, { zone }).offset;
  return wentForward ? before : after;
}

/** Ticks in (after, until], oldest first, at most `limit`. */
export function ticksBetween(schedule: Schedule, after: Date, until: Date, limit = 10_000): Date[] {
  const ticks: Date[] = [];
  if (until.getTime() <= after.getTime()) return ticks;
  if (schedule.kind === 'every') {
    const step = schedule.everyMs!;
    for (
      let t = Math.floor(after.getTime() / step) * step + step;
      t <= until.getTime() && ticks.length < limit;
      t += step
    ) {
      ticks.push(new Date(t));
    }
    return ticks;
  }
  const cron = CronExpressionParser.parse(schedule.expression, {
    currentDate: iterationStart(after, schedule.timezone),
    endDate: until,
    tz: schedule.timezone,
    hashSeed: schedule.name,
  });
  const skipRepeats = skipsRepeatedWallTimes(schedule);
  while (ticks.length < limit && cron.hasNext()) {
    const next = cron.next().toDate();
    if (next.getTime() > until.getTime()) break;
    if (next.getTime() <= after.getTime()) continue;
    if (skipRepeats && isRepeatedWallTime(next.getTime(), schedule.timezone)) continue;
    ticks.push(next);
  }
  return ticks;
}

/** The next `count` ticks after `after`. */
export function nextTicks(schedule: Schedule, after: Date, count: number): Date[] {
  if (schedule.kind === 'every') {
    const step = schedule.everyMs!;
    const first = Math.floor(after.getTime() / step) * step + step;
    return Array.from({ length: count }, (_, i) => new Date(first + i * step));
  }
  const ticks: Date[] = [];
  // A year of windows is more than any expression cron-parser accepts needs to yield `count`.
  for (let from = after, i = 0; ticks.length < count && i < 366; i++) {
    const until = new Date(from.getTime() + 86_400_000);
    ticks.push(...ticksBetween(schedule, from, until, count - ticks.length));
    from = until;
  }
  return ticks;
}

export interface DuePlan {
  /** Ticks to enqueue now, oldest first. */
  enqueue: Date[];
  /** Missed ticks outside the catch-up window: counted and logged, never enqueued. */
  skipped: { count: number; first?: Date; last?: Date; capped: boolean };
}

/** Bounds the work of a scheduler that was down for a very long time. */
const MAX_COUNTED = 100_000;
const MAX_ENQUEUED = 1_000;

/**
 * Given the last tick the cluster enqueued (or when the schedule first appeared), what
 * is due at `now`: the missed ticks inside the catch-up window, the rest skipped.
 */
export function planDue(schedule: Schedule, since: Date, now: Date): DuePlan {
  const windowStart =
    schedule.catchUpMs === undefined
      ? since
      : new Date(Math.max(since.getTime(), now.getTime() - schedule.catchUpMs));
  let enqueue = ticksBetween(schedule, windowStart, now, MAX_COUNTED);
  const skippedTicks = windowStart > since ? ticksBetween(schedule, since, windowStart, MAX_COUNTED) : [];
  if (schedule.catchUpMs === undefined && enqueue.length > 1) {
    skippedTicks.push(...enqueue.slice(0, -1));
    enqueue = enqueue.slice(-1);
  }
  if (enqueue.length > MAX_ENQUEUED) {
    skippedTicks.push(...enqueue.slice(0, enqueue.length - MAX_ENQUEUED));
    enqueue = enqueue.slice(-MAX_ENQUEUED);
  }
  return {
    enqueue,
    skipped: {
      count: skippedTicks.length,
      first: skippedTicks[0],
      last: skippedTicks[skippedTicks.length - 1],
      capped: skippedTicks.length >= MAX_COUNTED,
    },
  };
}
