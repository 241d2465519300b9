/** `outbatch worker`: run the tasks of an app module, optionally serving the dashboard. */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Command } from 'commander';
import { startAdminServer } from '../../admin/server.js';
import type { App } from '../../app.js';
import { parseDurationText } from '../../duration.js';
import { errorMessage, ValidationError } from '../../errors.js';
import type { WorkerOptions } from '../../worker/options.js';
import { globalOptions, runCommand } from '../context.js';
import { parseInteger, parsePort } from '../parse.js';
import { dashboardToken } from './dashboard.js';

interface WorkerFlags {
  app: string;
  queue?: string[];
  concurrency?: string;
  batchSize?: string;
  pollInterval?: string;
  stallTimeout?: string;
  heartbeatInterval?: string;
  shutdownTimeout?: string;
  vacuumJobsAfter?: string;
  dashboard?: boolean;
  port: string;
  host: string;
}

/** The module's `app` export (or default export): importing it registers the tasks. */
export async function loadAppModule(modulePath: string): Promise<App> {
  const url = pathToFileURL(path.resolve(modulePath)).href;
  let mod: { app?: unknown; default?: unknown };
  try {
    mod = await import(url);
  } catch (error) {
    throw new ValidationError(
      `--app module "${modulePath}" could not be loaded: ${errorMessage(error).split('\n')[0]}`,
    );
  }
  const app = (mod.app ?? mod.default) as Partial<App> | undefined;
  if (!app || typeof app.run !== 'function' || typeof app.task !== 'function') {
    throw new ValidationError(
      `--app module "${modulePath}" exports no app: expected "export const app = createApp(...)" (or a default export) with its tasks registered`,
    );
  }
  return app as App;
}

function vacuumJobsAfter(text: string | undefined): number | false | undefined {
  if (text === undefined) return undefined;
  if (text === 'off') return false;
  if (!/^\d+$/.test(text)) {
    throw new ValidationError(
      `--vacuum-jobs-after "${text}" is invalid: expected a whole number of dead rows, or off`,
    );
  }
  return parseInteger(text, '--vacuum-jobs-after');
}

export function registerWorker(program: Command): void {
  const collect = (value: string, previous: string[] = []) => [...previous, value];
  program
    .command('worker')
    .description('run jobs: the tasks registered by the module given with --app')
    .requiredOption(
      '--app <module>',
      'module exporting the app (e.g. dist/app.js); importing it registers the tasks',
    )
    .option('--queue <name>', 'queue to run (repeat for several; default: all)', collect)
    .option('--concurrency <n>', 'handlers running at once (default 10)')
    .option('--batch-size <n>', 'jobs claimed per round trip at most (default 1000)')
    .option('--poll-interval <duration>', 'polling fallback to LISTEN/NOTIFY (default 1s)')
    .option('--stall-timeout <duration>', 'a job whose worker is silent this long is recovered (default 30s)')
    .option('--heartbeat-interval <duration>', 'default: stall timeout / 6')
    .option('--shutdown-timeout <duration>', 'on SIGTERM, running handlers get this long (default 30s)')
    .option(
      '--vacuum-jobs-after <n|off>',
      'dead rows in the jobs table at which a busy worker vacuums it (default 200000; off: never)',
    )
    .option('--dashboard', 'also serve /metrics, /healthz, the dashboard and its API')
    .option('--port <n>', 'with --dashboard: port to listen on', '9464')
    .option('--host <address>', 'with --dashboard: address to bind', '127.0.0.1')
    .action((flags: WorkerFlags, command: Command) =>
      runCommand(command, async ({ signal, log }) => {
        const duration = (text: string | undefined, what: string) =>
          text === undefined ? undefined : parseDurationText(text, what);
        const options: WorkerOptions = {
          queues: flags.queue,
          concurrency:
            flags.concurrency === undefined ? undefined : parseInteger(flags.concurrency, '--concurrency'),
          batchSize:
            flags.batchSize === undefined ? undefined : parseInteger(flags.batchSize, '--batch-size'),
          pollInterval: duration(flags.pollInterval, '--poll-interval'),
          stallTimeout: duration(flags.stallTimeout, '--stall-timeout'),
          heartbeatInterval: duration(flags.heartbeatInterval, '--heartbeat-interval'),
          shutdownTimeout: duration(flags.shutdownTimeout, '--shutdown-timeout'),
          vacuumJobsAfter: vacuumJobsAfter(flags.vacuumJobsAfter),
        };
        // The module builds its own app; a --database-url given here reaches it as DATABASE_URL.
        const { databaseUrl, schema } = globalOptions(command);
        if (databaseUrl) process.env.DATABASE_URL = databaseUrl;
        process.env.OUTBATCH_SCHEMA = schema;
        const port = flags.dashboard ? parsePort(flags.port) : 0;
        const app = await loadAppModule(flags.app);
        // Started before the worker so /healthz answers while it starts, stopped after it drained.
        const server = flags.dashboard
          ? await startAdminServer({ app, host: flags.host, port, token: dashboardToken(), log })
          : undefined;
        try {
          await app.run({ ...options, signal, onJobFinished: server?.metrics.observeJob });
        } finally {
          await server?.close();
          await app.close().catch((error) => log.warn({ err: error }, 'closing the app failed'));
        }
      }),
    );
}
