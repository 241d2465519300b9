/**
 * `app.run()`: the whole worker process — the job loop, and beside it the scheduler
 * (every process may run it; ticks dedupe in the database) and the processors'
 * triggers — until its signal aborts, or SIGINT/SIGTERM without one. Refuses to start on
 * a database whose migrations or transaction ids are off.
 */
import type { Clock } from '../clock.js';
import type { Database } from '../db/database.js';
import { quoteSchema } from '../db/identifiers.js';
import { assertMigrated } from '../db/migrate.js';
import { retryConnection, StartAborted } from '../db/retry.js';
import { checkTxIdHorizon } from '../events/txIdHorizon.js';
import type { JobQueue } from '../jobs/queue.js';
import type { Logger } from '../log.js';
import type { Processors } from '../processors/processors.js';
import type { ScheduleRegistry } from '../schedule/registry.js';
import { makeScheduler } from '../schedule/scheduler.js';
import type { Tracing } from '../trace/tracing.js';
import type { WorkerOptions } from './options.js';
import { onStopSignals } from './signals.js';
import { startWorker } from './worker.js';
import type { WorkerPoolShelf } from './workerPools.js';

export interface RunOptions extends WorkerOptions {
  /** Stops the worker gracefully when aborted. Without one, SIGINT/SIGTERM do (a second one exits at once). */
  signal?: AbortSignal;
}

export interface RunAppDeps {
  database: () => Promise<Database>;
  schema: string;
  log: Logger;
  clock: Clock;
  queue: JobQueue;
  schedules: ScheduleRegistry;
  processors: Processors;
  /** The worker's connections, kept across the app's runs (workerPools.ts). */
  workerPools: WorkerPoolShelf;
  tracing: Tracing;
}

export async function runApp(deps: RunAppDeps, options: RunOptions = {}): Promise<void> {
  try {
    await startAndRun(deps, options);
  } catch (error) {
    // Aborted while start-up waited out connection trouble: the run ends as asked, quietly.
    if (error instanceof StartAborted) {
      deps.log.info({ reason: error.message }, 'run aborted during start-up');
      return;
    }
    throw error;
  }
}

async function startAndRun(deps: RunAppDeps, options: RunOptions): Promise<void> {
  const { signal } = options;
  // Spans from the first job on: OpenTelemetry's import (started with the app) has settled.
  await deps.tracing.ready;
  const db = await retryConnection('connecting', deps.database, deps.log, { signal });
  await retryConnection(
    'checking the schema',
    async () => {
      await assertMigrated(db.pool, deps.schema);
      await checkTxIdHorizon(db.pool, deps.schema);
    },
    deps.log,
    { signal },
  );
  const triggers = (
    await retryConnection(
      'starting the processors',
      () => deps.processors.start(db.listenTarget()),
      deps.log,
      {
        signal,
      },
    )
  ).subscribe();
  const entries = deps.schedules.entries();
  const scheduler =
    entries.length === 0
      ? undefined
      : makeScheduler({
          pool: db.pool,
          q: quoteSchema(deps.schema),
          log: deps.log,
          clock: deps.clock,
          schedules: entries,
          tracing: deps.tracing,
        })
          .run$()
          .subscribe();
  try {
    await runWorker(deps, db, options);
  } finally {
    triggers.unsubscribe();
    scheduler?.unsubscribe();
  }
}

/** Starts the worker, feeds it this process's due times, and stops it on the signal. */
async function runWorker(deps: RunAppDeps, db: Database, options: RunOptions): Promise<void> {
  const { signal, ...workerOptions } = options;
  const tasks = deps.queue.tasks();
  if (tasks.size === 0) deps.log.warn('worker starting with no tasks registered: it claims no jobs');
  const worker = startWorker(
    {
      databaseUrl: db.url,
      route: { ...db.route, listenUrl: db.listenTarget() },
      schema: deps.schema,
      log: deps.log,
      clock: deps.clock,
      tasks,
      defer: deps.queue.defer,
      pools: deps.workerPools,
      startSignal: signal,
      tracing: deps.tracing,
    },
    workerOptions,
  );
  // Subscribed before the worker has started: a job deferred meanwhile is still woken for.
  const due = deps.queue.due$.subscribe((at) => worker.wakeAt(at));
  let stopListening: (() => void) | undefined;
  try {
    await worker.started;
    await new Promise<void>((resolve) => {
      const stop = () => void worker.stop().then(resolve);
      if (!signal) {
        stopListening = onStopSignals(deps.log, stop, 'exiting now; running jobs will be recovered as dirty');
      } else if (signal.aborted) {
        stop();
      } else {
        signal.addEventListener('abort', stop, { once: true });
      }
    });
  } finally {
    due.unsubscribe();
    stopListening?.();
  }
}
