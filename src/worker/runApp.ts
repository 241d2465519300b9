/**
 * `app.run()`: the whole worker process — the job loop, and beside it the scheduler
 * (every process may run it; ticks dedupe in the database) and the processors'
 * triggers. Refuses to start on a database whose migrations or transaction ids are off.
 */
import type { Clock } from '../clock.js';
import type { Database } from '../db/database.js';
import { quoteSchema } from '../db/identifiers.js';
import { assertMigrated } from '../db/migrate.js';
import { retryConnection } from '../db/retry.js';
import { checkTxIdHorizon } from '../events/txIdHorizon.js';
import type { JobQueue, RunOptions } from '../jobs/queue.js';
import type { Logger } from '../log.js';
import type { Processors } from '../processors/processors.js';
import type { ScheduleRegistry } from '../schedule/registry.js';
import { makeScheduler } from '../schedule/scheduler.js';

export interface RunAppDeps {
  database: () => Promise<Database>;
  schema: string;
  log: Logger;
  clock: Clock;
  queue: JobQueue;
  schedules: ScheduleRegistry;
  processors: Processors;
}

export async function runApp(deps: RunAppDeps, options: RunOptions = {}): Promise<void> {
  const db = await deps.database();
  await retryConnection(
    'checking the schema',
    async () => {
      await assertMigrated(db.pool, deps.schema);
      await checkTxIdHorizon(db.pool, deps.schema);
    },
    deps.log,
  );
  const triggers = (
    await retryConnection('starting the processors', () => deps.processors.start(db.url), deps.log)
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
        })
          .run$()
          .subscribe();
  try {
    await deps.queue.run(options);
  } finally {
    triggers.unsubscribe();
    scheduler?.unsubscribe();
  }
}
