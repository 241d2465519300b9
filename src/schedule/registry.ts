/**
 * `app.schedule(...)`: the schedules defined in code. Each tick defers the target task
 * with the schedule's args plus `tick` (the ISO time of the period it serves).
 */

import type { Queryable } from '../db/queryable.js';
import { errorMessage, ValidationError } from '../errors.js';
import type { DeferResult } from '../jobs/defer.js';
import type { Handler, Task, TaskOptions } from '../jobs/task.js';
import { checkJson } from '../json.js';
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

/**
 * The args as the JSON they will be sent as, taken once: a later change to the caller's
 * object cannot make the ticks' args differ from (or fail) what was validated.
 */
function argsAsJson(schedule: string, args: Record<string, unknown>): Record<string, unknown> {
  try {
    return JSON.parse(JSON.stringify(args));
  } catch (error) {
    // checkJson lets objects with toJSON through (Dates); their toJSON may still throw.
    throw new ValidationError(
      `schedule "${schedule}": args cannot be written as JSON: ${errorMessage(error)}`,
    );
  }
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
      // Checked here, not at the first tick: args a defer refuses would fail every pass.
      checkJson(args, `schedule "${schedule.name}": args`);
      const tickArgs = argsAsJson(schedule.name, args);
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
            { ...tickArgs, tick: tick.toISOString() },
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
