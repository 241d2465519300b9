/**
 * The job queue as the App exposes it: `task`, `defer`, `run` and the operator
 * controls (`jobs`). Built by a factory so app.ts only wires it in.
 */
import type { Logger } from 'pino';
import { type Clock, systemClock } from '../clock.js';
import type { Database } from '../db/database.js';
import { ValidationError } from '../errors.js';
import type { WorkerOptions } from '../worker/options.js';
import { startWorker, type Worker } from '../worker/worker.js';
import { type JobControl, makeJobControl } from './control.js';
import type { DeferResult } from './defer.js';
import {
  type DeferOptions,
  deferSpec,
  type Handler,
  makeTask,
  type ResolvedTask,
  resolveTask,
  type Task,
  type TaskEnv,
  type TaskOptions,
  toJobSpec,
} from './task.js';

export interface RunOptions extends WorkerOptions {
  /** Stops the worker gracefully when aborted. Without one, SIGINT/SIGTERM do (a second one exits at once). */
  signal?: AbortSignal;
}

export interface JobQueue {
  task<A = unknown>(name: string, options: TaskOptions, handler: Handler<A>): Task<A>;
  defer(task: string | Task, args?: unknown, options?: DeferOptions): Promise<DeferResult>;
  run(options?: RunOptions): Promise<void>;
  jobs: JobControl;
  /** Names of the registered tasks. */
  taskNames(): string[];
}

export interface JobQueueDeps {
  schema: string;
  log: Logger;
  clock: Clock;
  database: () => Promise<Database>;
}

export function makeJobQueue(deps: JobQueueDeps): JobQueue {
  const { schema, log, clock, database } = deps;
  const tasks = new Map<string, ResolvedTask>();
  const pool = async () => (await database()).pool;
  const now = () => clock.now();
  const injectedClock = clock !== systemClock;
  let worker: Worker | undefined; // while run() runs
  const env: TaskEnv = {
    schema,
    pool,
    now,
    injectedClock,
    deferredFor: (runAt) => worker?.wakeAt(runAt),
  };

  return {
    task(name, options, handler) {
      if (options === null || typeof options !== 'object') {
        throw new ValidationError(
          `task "${name}" options are invalid: expected an object (use {} for defaults)`,
        );
      }
      const resolved = resolveTask(name, options, handler as Handler);
      if (tasks.has(name))
        throw new ValidationError(`task "${name}" is already registered: task names are unique per app`);
      tasks.set(name, resolved);
      return makeTask(resolved, env);
    },

    async defer(task, args, options = {}) {
      const name = typeof task === 'string' ? task : task?.name;
      const spec = toJobSpec(name, args, options, tasks.get(name), now, injectedClock);
      return deferSpec(env, spec, options.client);
    },

    async run(options = {}) {
      const { signal, ...workerOptions } = options;
      // runApp, the one caller, has checked the schema.
      const db = await database();
      if (tasks.size === 0)
        log.warn(
          'worker starting with no tasks registered: it claims no jobs (a worker claims only the tasks it registers)',
        );
      const started = startWorker({ databaseUrl: db.url, schema, log, clock, tasks }, workerOptions);
      worker = started; // before it has started: a job deferred meanwhile is still woken for
      await started.started.catch((error) => {
        worker = undefined;
        throw error;
      });
      let onSignal: ((name: NodeJS.Signals) => void) | undefined;
      try {
        await new Promise<void>((resolve) => {
          const stop = () => void started.stop().then(resolve);
          if (signal) {
            if (signal.aborted) stop();
            else signal.addEventListener('abort', stop, { once: true });
            return;
          }
          let received = 0;
          onSignal = (name) => {
            received += 1;
            if (received > 1) {
              log.warn(
                { signal: name },
                'second signal: exiting now; running jobs will be recovered as dirty',
              );
              process.exit(130);
            }
            log.info({ signal: name }, 'stopping gracefully (send the signal again to exit at once)');
            stop();
          };
          process.on('SIGINT', onSignal);
          process.on('SIGTERM', onSignal);
        });
      } finally {
        worker = undefined;
        if (onSignal) {
          process.off('SIGINT', onSignal);
          process.off('SIGTERM', onSignal);
        }
      }
    },

    jobs: makeJobControl({ schema, log, pool }),
    taskNames: () => [...tasks.keys()],
  };
}
