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
import type { Queryable } from '../db/queryable.js';
import { withTransaction } from '../db/transaction.js';
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
}

export interface Scheduler {
  /** One pass over every schedule; returns the ticks enqueued by this call. */
  runOnce(): Promise<{ schedule: string; tick: Date }[]>;
  /** Passes every `intervalMs` until unsubscribed. */
  run$(intervalMs?: number): Observable<unknown>;
}

export function makeScheduler({ pool, q, log, clock, schedules }: SchedulerDeps): Scheduler {
  const slog = log.child({ component: 'scheduler' });

  async function runSchedule(entry: ScheduledTask): Promise<Date[]> {
    const { schedule } = entry;
    const now = clock.now();
    const enqueued = await withTransaction(pool, async (client) => {
      const { since } = await touchSchedule(client, q, schedule, entry.task, now);
      const plan = planDue(schedule, since, now);
      if (plan.skipped.count > 0) {
        slog.warn(
          {
            schedule: schedule.name,
            skipped: plan.skipped.count,
            from: plan.skipped.first?.toISOString(),
            to: plan.skipped.last?.toISOString(),
          },
          `schedule "${schedule.name}": skipped ${plan.skipped.capped ? 'at least ' : ''}${plan.skipped.count} missed tick(s) from ${plan.skipped.first?.toISOString()} to ${plan.skipped.last?.toISOString()} (outside its catch-up window)`,
        );
      }
      const last = plan.enqueue.at(-1) ?? plan.skipped.last;
      if (!last) return [];
      const claimed = await claimTicks(client, q, schedule.name, plan.enqueue, now);
      for (const tick of claimed) {
        await recordTickJob(client, q, schedule.name, tick, await entry.enqueue(client, tick));
      }
      await advanceSchedule(client, q, schedule.name, last, now);
      return claimed;
    });
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
      for (const tick of await runSchedule(entry)) done.push({ schedule: entry.schedule.name, tick });
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
