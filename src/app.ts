import type { Logger } from 'pino';
import { type Clock, systemClock } from './clock.js';
import type { PoolOptions } from './db/connection.js';
import { type Database, openDatabase } from './db/database.js';
import { validateSchemaName } from './db/identifiers.js';
import { type Migration, migrate } from './db/migrate.js';
import { type Events, type EventsOptions, makeEvents } from './events/events.js';
import { type JobQueue, makeJobQueue } from './jobs/queue.js';
import { silentLogger } from './log.js';

export interface AppOptions {
  /** postgres:// URL; defaults to DATABASE_URL, and without either the embedded server is started. */
  databaseUrl?: string;
  /** Schema holding every outbatch table (default `outbatch`). */
  schema?: string;
  logger?: Logger;
  /** Data folder of the embedded server (default `.outbatch/pg`, or OUTBATCH_DATA_DIR). */
  dataDir?: string;
  pool?: PoolOptions;
  clock?: Clock;
  /** Event outbox settings (`maxEventBytes`). */
  events?: EventsOptions;
}

export interface App {
  readonly schema: string;
  readonly log: Logger;
  readonly clock: Clock;
  /** The connection pool, opened (and the embedded server started) on first use. */
  database(): Promise<Database>;
  migrate(options?: { onApplied?: (migration: Migration) => void }): Promise<{ applied: Migration[] }>;
  close(): Promise<void>;
  /** The event outbox: append, read, follow. */
  readonly events: Events;
  /** Registers a task; see README "Jobs". */
  task: JobQueue['task'];
  /** Defers a job by task name (or task), for services that do not import the handler. */
  defer: JobQueue['defer'];
  /** Runs a worker until the signal aborts (or SIGINT/SIGTERM without one). */
  run: JobQueue['run'];
  /** Operator controls: list, show, retry, cancel, delete, stats. */
  jobs: JobQueue['jobs'];
}

export function createApp(options: AppOptions = {}): App {
  const schema = validateSchemaName(options.schema ?? 'outbatch');
  const log = (options.logger ?? silentLogger()).child({ schema });
  const clock = options.clock ?? systemClock;
  let opening: Promise<Database> | undefined;

  const database = () => {
    opening ??= openDatabase({
      ...options.pool,
      databaseUrl: options.databaseUrl ?? (process.env.DATABASE_URL || undefined),
      dataDir: options.dataDir ?? (process.env.OUTBATCH_DATA_DIR || undefined),
      log,
    });
    return opening;
  };

  const queue = makeJobQueue({ schema, log, clock, database });

  return {
    schema,
    log,
    clock,
    database,
    task: queue.task,
    defer: queue.defer,
    run: queue.run,
    jobs: queue.jobs,
    async migrate(migrateOptions = {}) {
      const db = await database();
      return migrate(db.pool, schema, log, migrateOptions.onApplied);
    },
    events: makeEvents({ database, schema, log, clock, options: options.events }),
    async close() {
      if (!opening) return;
      const db = await opening.catch(() => undefined);
      await db?.close();
    },
  };
}
