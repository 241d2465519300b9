/**
 * `app.schedule(...)`: the schedules defined in code. Each tick defers the target task
 * with the schedule's args plus `tick` (the ISO time of the period it serves).
 */

import type { Queryable } from '../db/queryable.js';
import { ValidationError } from '../errors.js';
import type { DeferResult } from '../jobs/defer.js';
import type { Handler, Task, TaskOptions } from '../jobs/task.js';
import { defineSchedule, type Schedule, type ScheduleSpec } from './definition.js';
import type { ScheduledTask } from './scheduler.js';

export interface ScheduleQueue {
  task(name: string, options: TaskOptions, handler: Handler): Task;
  defer(
    task: string | Task,
    args?: unknown,
    options?: { client?: Queryable; runAt?: Date },
  ): Promise<DeferResult>;
}

export interface ScheduleRegistry {
  schedule(
    name: string,
    spec: ScheduleSpec,
    target: Task | Handler,
    args?: Record<string, unknown>,
  ): Schedule;
  /** Adds a schedule whose ticks do something else than defer one task (processor runs). */
  add(entry: ScheduledTask): void;
  entries(): ScheduledTask[];
}

export function makeScheduleRegistry(queue: ScheduleQueue): ScheduleRegistry {
  const entries = new Map<string, ScheduledTask>();
  const add = (entry: ScheduledTask) => {
    if (entries.has(entry.schedule.name)) {
      throw new ValidationError(
        `schedule "${entry.schedule.name}" is defined twice: schedule names are unique per app`,
      );
    }
    entries.set(entry.schedule.name, entry);
  };
  return {
    schedule(name, spec, target, args = {}) {
      const schedule = defineSchedule(name, spec);
      if (args === null || typeof args !== 'object' || Array.isArray(args)) {
        throw new ValidationError(
          `schedule "${schedule.name}": args must be an object (the job gets them plus "tick")`,
        );
      }
      if (entries.has(schedule.name)) {
        throw new ValidationError(
          `schedule "${schedule.name}" is defined twice: schedule names are unique per app`,
        );
      }
      let task: Task;
      if (typeof target === 'function') task = queue.task(`schedule:${schedule.name}`, {}, target);
      else if (target && typeof target === 'object' && typeof target.name === 'string') task = target;
      else
        throw new ValidationError(
          `schedule "${schedule.name}": target must be a task (from app.task) or a handler function`,
        );
      add({
        schedule,
        task: task.name,
        async enqueue(client, tick) {
          // Due at its tick: catch-up ticks run oldest first.
          const result = await queue.defer(
            task,
            { ...args, tick: tick.toISOString() },
            { client, runAt: tick },
          );
          return result.enqueued ? result.id : result.existingId;
        },
      });
      return schedule;
    },
    add,
    entries: () => [...entries.values()],
  };
}
