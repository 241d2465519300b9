/** createApp: the one object a service holds (events, processors, jobs, schedules), wired from its options. */
import type { Logger } from 'pino';
import { type Clock, systemClock } from './clock.js';
import { checkDatabaseUrl, type PoolOptions } from './db/connection.js';
import { type Database, openDatabase } from './db/database.js';
import { quoteSchema, validateSchemaName } from './db/identifiers.js';
import { type Migration, migrate } from './db/migrate.js';
import { checkPooler } from './db/pooler.js';
import { makeReads, type Reads } from './db/readReplica.js';
import { type Events, type EventsOptions, makeEvents } from './events/events.js';
import { makeRead } from './events/read.js';
import { type RedriveOptions, type RedriveResult, redrive } from './events/redrive.js';
import { makeUpcasters, type Upcaster } from './events/upcast.js';
import { type JobQueue, makeJobQueue } from './jobs/queue.js';
import { makeQueueControl, type QueueControl } from './jobs/queueControl.js';
import { silentLogger } from './log.js';
import { makeProcessorControl, type ProcessorControl } from './processors/control.js';
import { makeProcessors } from './processors/processors.js';
import type { Schedule } from './schedule/definition.js';
import { makeScheduleRegistry, type ScheduleRegistry } from './schedule/registry.js';
import { checkTracingMode, makeTracing, type TracingMode } from './trace/tracing.js';
import type { AppTypes, DeclaredEvents, DeclaredTasks, EventSchemas } from './typing/declare.js';
import type {
  TypedAppend,
  TypedProcessors,
  TypedTasks,
  UntypedAppend,
  UntypedProcessors,
} from './typing/surface.js';
import { type RunOptions, runApp } from './worker/runApp.js';
import { makeWorkerPoolShelf } from './worker/workerPools.js';

/**
 * `T` declares the app's events and tasks for the compiler (docs/typing.md); without it
 * everything is untyped, as before.
 */
export interface AppOptions<T extends AppTypes = AppTypes> {
  /** postgres:// URL; defaults to DATABASE_URL, and without either the embedded server is started. */
  databaseUrl?: string;
  /**
   * A direct postgres:// URL for the LISTEN connection when `databaseUrl` goes through a
   * transaction pooler (default OUTBATCH_LISTEN_URL). Without one behind a pooler, wake-ups
   * come from polling. See docs/pgbouncer.md.
   */
  listenUrl?: string;
  /** Schema holding every outbatch table (default `outbatch`). */
  schema?: string;
  logger?: Logger;
  /** Data folder of the embedded server (default `.outbatch/pg`, or OUTBATCH_DATA_DIR). */
  dataDir?: string;
  pool?: PoolOptions;
  clock?: Clock;
  /** Event outbox settings (`maxEventBytes`, `schemas`: a validator per event type). */
  events?: Omit<EventsOptions, 'schemas'> & { schemas?: EventSchemas<T> };
  /**
   * postgres:// URL of a streaming replica of databaseUrl (default OUTBATCH_READ_URL): processor
   * page reads, `events.read/stream/follow`, status and the dashboard read there; see docs/replicas.md.
   */
  readUrl?: string;
  /**
   * `auto` (default, or OUTBATCH_TRACING): if `@opentelemetry/api` can be imported, emit
   * spans and follow the active trace context through it; `off`: never import it. Trace
   * context given as options, and the cause of what handlers and processor pages write,
   * are recorded either way. See docs/tracing.md.
   */
  tracing?: TracingMode;
}

/** The events side of App<T>: `append` checked against the declared events, if any. */
export type AppEvents<T extends AppTypes = AppTypes> = Omit<Events, 'append'> &
  (DeclaredEvents<T> extends object ? TypedAppend<T> : UntypedAppend) & {
    redrive(options: RedriveOptions): Promise<RedriveResult>;
  };

type AppTasks<T> = DeclaredTasks<T> extends object ? TypedTasks<T> : JobQueue;
type AppProcessors<T> = DeclaredEvents<T> extends object ? TypedProcessors<T> : UntypedProcessors;

/**
 * The app: `App` untyped, or `App<T>` for an app that declared its events and/or tasks
 * (docs/typing.md). Two interfaces rather than one generic: TypeScript then compares a
 * typed app with a plain one member by member, so `App<T>` fits where `App` is expected.
 */
export type App<T extends AppTypes = AppTypes> =
  DeclaredEvents<T> extends object ? TypedApp<T> : DeclaredTasks<T> extends object ? TypedApp<T> : UntypedApp;

/** An app without declarations: any event type, any task name, `unknown` data. */
export interface UntypedApp extends AppCommon {
  /** The event outbox: append, read, follow, and re-drive a range of events to a task. */
  readonly events: AppEvents;
  /** Registers a task; see docs/jobs.md. */
  task: JobQueue['task'];
  /** Defers a job by task name (or task), for services that do not import the handler. */
  defer: JobQueue['defer'];
  /** Defers a job and waits for its outcome (its handler's return value); see docs/lifecycle.md. */
  deferAndWait: JobQueue['deferAndWait'];
  /** A batch processor over the event log; see docs/processors.md. */
  processor: UntypedProcessors['processor'];
}

/** An app that declared its events and/or tasks: those members check against T. */
export interface TypedApp<T extends AppTypes> extends AppCommon {
  /** The event outbox: `append` takes only the declared types (when events are declared). */
  readonly events: AppEvents<T>;
  /** Registers a task; with declared tasks, only a declared name, and the handler gets its args. */
  task: AppTasks<T>['task'];
  /** Defers a job by task name (or task), its args checked against the declaration. */
  defer: AppTasks<T>['defer'];
  /** Defers a job and waits for its outcome, its args checked against the declaration. */
  deferAndWait: AppTasks<T>['deferAndWait'];
  /** A batch processor; with declared events, `types` narrows `events$`. */
  processor: AppProcessors<T>['processor'];
}

/** What every app has, declared or not. */
export interface AppCommon {
  readonly schema: string;
  readonly log: Logger;
  readonly clock: Clock;
  /** The connection pool, opened (and the embedded server started) on first use. */
  database(): Promise<Database>;
  /** Where reads go: the `readUrl` replica's pool, or the database's own without one. */
  reads(): Promise<Reads>;
  migrate(options?: { onApplied?: (migration: Migration) => void }): Promise<{ applied: Migration[] }>;
  close(): Promise<void>;
  /**
   * Runs the worker — jobs, the scheduler and the processors' triggers — until the signal
   * aborts (or SIGINT/SIGTERM without one).
   */
  run(options?: RunOptions): Promise<void>;
  /** A cron or `every` schedule whose ticks defer `target` with `args` plus `tick`; see docs/schedules.md. */
  schedule: ScheduleRegistry['schedule'];
  /**
   * Registers how `data` of `type` at version `fromVersion` becomes version `fromVersion + 1`
   * on read; appends then record the highest version as the type's current one. In version
   * order from 1, before the app appends or reads; see docs/upcasting.md.
   */
  upcast<From = unknown, To = unknown>(type: string, fromVersion: number, fn: Upcaster<From, To>): void;
  /** What this app defines in code: for `schedules check` and tooling. */
  definitions(): { tasks: string[]; schedules: Schedule[]; processors: string[] };
  /** Operator controls on processors: status, pause, resume, resetFailed. */
  readonly processors: ProcessorControl;
  /** Operator controls: list, show, retry, cancel, delete, stats. */
  jobs: JobQueue['jobs'];
  /** Queue limits and pauses, enforced in the claim across every worker: docs/limits.md. */
  readonly queues: QueueControl;
}

export function createApp<T extends AppTypes = AppTypes>(options: AppOptions<T> = {}): App<T> {
  const schema = validateSchemaName(options.schema ?? (process.env.OUTBATCH_SCHEMA || 'outbatch'));
  const log = (options.logger ?? silentLogger()).child({ schema });
  const clock = options.clock ?? systemClock;
  const listenUrl = options.listenUrl ?? (process.env.OUTBATCH_LISTEN_URL || undefined);
  if (listenUrl !== undefined) {
    checkDatabaseUrl(listenUrl, options.listenUrl === undefined ? 'OUTBATCH_LISTEN_URL' : 'listenUrl');
  }
  const pooler =
    checkPooler(options.pool?.pooler, 'pool.pooler') ??
    checkPooler(process.env.OUTBATCH_POOLER, 'OUTBATCH_POOLER');
  const tracingMode =
    options.tracing === undefined && process.env.OUTBATCH_TRACING
      ? checkTracingMode(process.env.OUTBATCH_TRACING, 'OUTBATCH_TRACING')
      : checkTracingMode(options.tracing ?? 'auto', 'tracing');
  // Started now, once: the import has settled by the first append or defer, which wait for it otherwise.
  const tracing = makeTracing(tracingMode, log);
  let opening: Promise<Database> | undefined;

  // A failed open is forgotten, so the next call tries again: a worker started while the
  // network drops a connection retries its start-up instead of keeping that first failure.
  const database = () => {
    if (!opening) {
      const attempt = openDatabase({
        ...options.pool,
        pooler,
        listenUrl,
        databaseUrl: options.databaseUrl ?? (process.env.DATABASE_URL || undefined),
        dataDir: options.dataDir ?? (process.env.OUTBATCH_DATA_DIR || undefined),
        log,
      });
      opening = attempt;
      attempt.catch(() => {
        if (opening === attempt) opening = undefined;
      });
    }
    return opening;
  };

  const reads = makeReads({
    readUrl: options.readUrl ?? (process.env.OUTBATCH_READ_URL || undefined),
    readUrlName: options.readUrl === undefined ? 'OUTBATCH_READ_URL' : 'readUrl',
    database,
    log,
    pool: options.pool,
  });
  const queue = makeJobQueue({ schema, log, clock, database, tracing });
  const pool = async () => (await database()).pool;
  // One registry per app: every reader below upcasts with it, every append records its versions.
  const upcasters = makeUpcasters();
  const events = makeEvents({
    database,
    reads: reads.get,
    schema,
    log,
    clock,
    upcasters,
    options: options.events,
    tracing,
  });
  const schedules = makeScheduleRegistry(queue);
  const q = quoteSchema(schema);
  const processors = makeProcessors({
    schema,
    q,
    log,
    clock,
    pool,
    reads: reads.get,
    readStored: makeRead({ pool: async () => (await reads.get()).pool, schema, upcasters: null }),
    upcasters,
    queue,
    schedules,
    tracing,
  });
  const workerPools = makeWorkerPoolShelf(log);

  const app: App = {
    schema,
    log,
    clock,
    database,
    reads: reads.get,
    task: queue.task,
    defer: queue.defer,
    deferAndWait: queue.deferAndWait,
    run: (runOptions) =>
      runApp(
        { database, schema, log, clock, queue, schedules, processors, workerPools, tracing },
        runOptions,
      ),
    jobs: queue.jobs,
    queues: makeQueueControl({ schema, pool }),
    schedule: schedules.schedule,
    upcast: (type, fromVersion, fn) => upcasters.register(type, fromVersion, fn),
    processor: processors.define,
    definitions: () => ({
      tasks: queue.taskNames(),
      schedules: schedules.entries().map((entry) => entry.schedule),
      processors: processors.definitions().map((def) => def.name),
    }),
    processors: makeProcessorControl({ pool, reads: reads.get, q, log }),
    async migrate(migrateOptions = {}) {
      const db = await database();
      return migrate(db.pool, schema, log, migrateOptions.onApplied);
    },
    events: {
      ...events,
      redrive: (redriveOptions) =>
        redrive(
          {
            pool,
            q,
            // On the primary even with readUrl: the re-drive counts its range there, and must
            // defer every event it counted, not stop at a lagging replica's head.
            read: makeRead({ pool, schema, upcasters }),
            defer: (task, args, opts) => queue.defer(task, args, opts),
          },
          redriveOptions,
        ),
    },
    async close() {
      queue.close();
      await workerPools.close();
      await reads.close();
      if (!opening) return;
      const db = await opening.catch(() => undefined);
      await db?.close();
    },
  };
  // T is for the compiler only: the typed app is this same object.
  return app as unknown as App<T>;
}
