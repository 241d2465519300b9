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
import { checkWaitOptions, makeJobWaiter } from './await.js';
import { type JobControl, makeJobControl } from './control.js';
import type { DeferResult } from './defer.js';
import {
  type BatchHandler,
  type BatchTaskOptions,
  checkArgs,
  type DeferAndWaitOptions,
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
  /** A batch task (docs/batches.md): the handler gets the args of many jobs at once. */
  task<A = unknown>(name: string, options: BatchTaskOptions<A>, handler: BatchHandler<A>): Task<A>;
  task<A = unknown>(name: string, options: TaskOptions<A>, handler: Handler<A>): Task<A>;
  defer(task: string | Task, args?: unknown, options?: DeferOptions): Promise<DeferResult>;
  /** Defers a job by name (or task) and waits for its outcome: see Task.deferAndWait. */
  deferAndWait<R = unknown>(task: string | Task, args?: unknown, options?: DeferAndWaitOptions): Promise<R>;
  jobs: JobControl;
  /** Names of the registered tasks. */
  taskNames(): string[];
  /** The registered tasks, for the worker. */
  tasks(): ReadonlyMap<string, ResolvedTask>;
  /** The due time of each job deferred for later from this process (a worker claims it then). */
  readonly due$: Observable<Date>;
  /** Ends deferAndWait's LISTEN connection (app.close). */
  close(): void;
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
  const waiter = makeJobWaiter({ schema, database, log, deferredFor: (runAt) => due$.next(runAt) });
  const env: TaskEnv = {
    schema,
    pool,
    now,
    injectedClock,
    deferredFor: (runAt) => due$.next(runAt),
    deferAndWait: waiter.deferAndWait,
    tracing,
  };

  return {
    task(name: string, options: TaskOptions | BatchTaskOptions, handler: Handler | BatchHandler) {
      if (options === null || typeof options !== 'object') {
        throw new ValidationError(
          `task "${name}" options are invalid: expected an object (use {} for defaults)`,
        );
      }
      const resolved = resolveTask(name, options, handler);
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

    async deferAndWait<R>(task: string | Task, args?: unknown, options: DeferAndWaitOptions = {}) {
      const name = typeof task === 'string' ? task : task?.name;
      const settings = checkWaitOptions(options, String(name));
      const { timeout: _timeout, pollInterval: _pollInterval, ...deferOptions } = options;
      const resolved = tasks.get(name);
      const checked = resolved?.schema ? await checkArgs(resolved, args, 'args') : args;
      const spec = toJobSpec(name, checked, deferOptions, resolved, now, injectedClock);
      return (await waiter.deferAndWait(spec, settings)) as R;
    },

    jobs: makeJobControl({ schema, log, pool }),
    taskNames: () => [...tasks.keys()],
    tasks: () => tasks,
    due$: due$.asObservable(),
    close: () => waiter.close(),
  };
}
