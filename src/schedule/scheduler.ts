/**
 * Turns due ticks into jobs. Any number of processes may run it: per schedule, one
 * transaction upserts the schedule row (serialising schedulers on its row lock),
 * inserts the due tick rows (the unique (schedule, tick) key dedupes), and defers one
 * job per tick it inserted — the tick and its job commit together or not at all.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { catchError, defer, EMPTY, exhaustMap, type Observable, timer } from 'rxjs';
import type { Clock } from '../clock.js';
import { ownDeadline, underDeadline } from '../db/deadline.js';
import type { Queryable } from '../db/queryable.js';
import { withTransaction } from '../db/transaction.js';
import { errorMessage } from '../errors.js';
import type { Tracing } from '../trace/tracing.js';
import type { Schedule } from './definition.js';
import { advanceSchedule, claimTicks, recordTickJob, touchSchedule } from './store.js';
import { planDue } from './ticks.js';

export interface ScheduledTask {
  schedule: Schedule;
  /** Name of the task the ticks run. */
  task: string;
  /** Defers the tick's job through `client` (the tick's transaction); returns the job id. */
  enqueue(client: Queryable, tick: Date): Promise<string | null>;
}

export interface SchedulerDeps {
  pool: pg.Pool;
  /** Quoted schema name. */
  q: string;
  log: Logger;
  clock: Clock;
  schedules: ScheduledTask[];
  /** With OpenTelemetry loaded, each tick's enqueue is a span, the parent of the tick's job. */
  tracing?: Tracing;
}

export interface Scheduler {
  /**
   * One pass over every schedule; returns the ticks enqueued by this call. A schedule
   * whose pass fails is logged and left for the next pass; the others still run.
   */
  runOnce(): Promise<{ schedule: string; tick: Date }[]>;
  /** Passes every `intervalMs` until unsubscribed. */
  run$(intervalMs?: number): Observable<unknown>;
}

export function makeScheduler({ pool, q, log, clock, schedules, tracing }: SchedulerDeps): Scheduler {
  const slog = log.child({ component: 'scheduler' });

  /** The tick's job, deferred through the tick's transaction (in a span, with OpenTelemetry). */
  function enqueueTick(entry: ScheduledTask, client: Queryable, tick: Date): Promise<string | null> {
    const otel = tracing?.otel;
    if (otel === undefined) return entry.enqueue(client, tick);
    // The transaction carries the tick's trace to the defer, with or without a context manager.
    return otel.tick(entry.schedule.name, tick, async (origin) => {
      if (origin) tracing!.bind(client, origin);
      try {
        return await entry.enqueue(client, tick);
      } finally {
        tracing!.unbind(client);
      }
    });
  }

  async function runSchedule(entry: ScheduledTask): Promise<Date[]> {
    const { schedule } = entry;
    const now = clock.now();
    // Every statement of a pass is outbatch's own: a pass hung on a half-open connection
    // would hold the exhaustMap below, and every schedule with it.
    const { enqueued, skipped } = await withTransaction(pool, (client) =>
      underDeadline(client, ownDeadline(pool), async () => {
        const { since } = await touchSchedule(client, q, schedule, entry.task, now);
        const plan = planDue(schedule, since, now);
        const last = plan.enqueue.at(-1) ?? plan.skipped.last;
        if (!last) return { enqueued: [], skipped: plan.skipped };
        const claimed = await claimTicks(client, q, schedule.name, plan.enqueue, now);
        for (const tick of claimed) {
          await recordTickJob(client, q, schedule.name, tick, await enqueueTick(entry, client, tick));
        }
        await advanceSchedule(client, q, schedule.name, last, now);
        return { enqueued: claimed, skipped: plan.skipped };
      }),
    );
    // Logged once committed: a pass that rolls back skipped nothing, and the next one
    // would report the same ticks again.
    if (skipped.count > 0) {
      slog.warn(
        {
          schedule: schedule.name,
          skipped: skipped.count,
          from: skipped.first?.toISOString(),
          to: skipped.last?.toISOString(),
        },
        `schedule "${schedule.name}": skipped ${skipped.capped ? 'at least ' : ''}${skipped.count} missed tick(s) from ${skipped.first?.toISOString()} to ${skipped.last?.toISOString()} (outside its catch-up window)`,
      );
    }
    for (const tick of enqueued) {
      const lateMs = now.getTime() - tick.getTime();
      if (lateMs > schedule.lateAfterMs) {
        slog.warn(
          { schedule: schedule.name, tick: tick.toISOString(), lateMs },
          `schedule "${schedule.name}": tick ${tick.toISOString()} enqueued ${Math.round(lateMs / 1000)} s late`,
        );
      }
    }
    return enqueued;
  }

  async function runOnce() {
    const done: { schedule: string; tick: Date }[] = [];
    for (const entry of schedules) {
      const name = entry.schedule.name;
      // Each schedule's pass stands alone: one that throws (args the defer refuses, a
      // database error on its rows) must not hold back the schedules after it. Its
      // transaction rolled back, so its due ticks are still unclaimed and the next pass
      // tries them again; it is logged on every failed pass, here and nowhere else.
      let ticks: Date[];
      try {
        ticks = await runSchedule(entry);
      } catch (error) {
        slog.error(
          { err: error, schedule: name, task: entry.task },
          `schedule "${name}": enqueueing its due ticks failed (trying again on the next pass): ${errorMessage(error).split('\n')[0]}`,
        );
        continue;
      }
      for (const tick of ticks) done.push({ schedule: name, tick });
    }
    return done;
  }

  return {
    runOnce,
    run$(intervalMs = 1_000) {
      // exhaustMap: a slow pass (a busy database) is never overlapped by the next one.
      return timer(0, intervalMs).pipe(
        exhaustMap(() =>
          defer(() => runOnce()).pipe(
            // runOnce isolates each schedule's failure; this only keeps the timer alive
            // should anything else in a pass throw.
            catchError((error) => {
              slog.error({ err: error }, 'scheduler pass failed; retrying on the next interval');
              return EMPTY;
            }),
          ),
        ),
      );
    },
  };
}
