/**
 * The job queue as the App exposes it: `task`, `defer` and the operator controls (`jobs`).
 * Built by a factory so app.ts only wires it in. Running jobs is the worker's business
 * (src/worker/): it reads the registered tasks from here and subscribes to `due$` to claim
 * a job this process deferred for later as soon as it falls due.
 */
import type { Logger } from 'pino';
import { type Observable, Subject } from 'rxjs';
import { type Clock, systemClock } from '../clock.js';
import type { Database } from '../db/database.js';
import { ValidationError } from '../errors.js';
import { type Tracing, traceOption } from '../trace/tracing.js';
import { type JobControl, makeJobControl } from './control.js';
import type { DeferResult } from './defer.js';
import {
  checkArgs,
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

export interface JobQueue {
  task<A = unknown>(name: string, options: TaskOptions<A>, handler: Handler<A>): Task<A>;
  defer(task: string | Task, args?: unknown, options?: DeferOptions): Promise<DeferResult>;
  jobs: JobControl;
  /** Names of the registered tasks. */
  taskNames(): string[];
  /** The registered tasks, for the worker. */
  tasks(): ReadonlyMap<string, ResolvedTask>;
  /** The due time of each job deferred for later from this process (a worker claims it then). */
  readonly due$: Observable<Date>;
}

export interface JobQueueDeps {
  schema: string;
  log: Logger;
  clock: Clock;
  database: () => Promise<Database>;
  tracing: Tracing;
}

export function makeJobQueue(deps: JobQueueDeps): JobQueue {
  const { schema, log, clock, database, tracing } = deps;
  const tasks = new Map<string, ResolvedTask>();
  const pool = async () => (await database()).pool;
  const now = () => clock.now();
  const injectedClock = clock !== systemClock;
  const due$ = new Subject<Date>();
  const env: TaskEnv = {
    schema,
    pool,
    now,
    injectedClock,
    deferredFor: (runAt) => due$.next(runAt),
    tracing,
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
      const trace = traceOption(options);
      const resolved = tasks.get(name);
      // By name the schema applies only where the task is registered: a service deferring
      // a task it has no handler for does not know its schema.
      const checked = resolved?.schema ? await checkArgs(resolved, args, 'args') : args;
      const spec = toJobSpec(name, checked, options, resolved, now, injectedClock);
      return deferSpec(env, spec, options.client, trace);
    },

    jobs: makeJobControl({ schema, log, pool }),
    taskNames: () => [...tasks.keys()],
    tasks: () => tasks,
    due$: due$.asObservable(),
  };
}
