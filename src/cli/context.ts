/** What every command shares: global options, the app it opens, output in text or JSON, exit codes. */
import type { Command } from 'commander';
import { type App, createApp } from '../app.js';
import { checkDatabaseUrl } from '../db/connection.js';
import { ConnectionError, errorMessage, ValidationError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { onStopSignals } from '../worker/signals.js';

/** Options every command accepts (declared once on the root program). */
export interface GlobalOptions {
  databaseUrl?: string;
  schema: string;
  dataDir?: string;
  json?: boolean;
}

export interface CommandContext {
  app: App;
  log: Logger;
  json: boolean;
  /** Aborted on the first SIGINT/SIGTERM; long commands stop cleanly when it fires. */
  signal: AbortSignal;
  /** Prints `human` normally, or `data` as JSON with --json. */
  print(human: string, data: unknown): void;
}

/** Exit 2 for bad input (the user can fix the command line), 1 for everything else. */
export const EXIT_USAGE = 2;
export const EXIT_FAILURE = 1;

export function globalOptions(command: Command): GlobalOptions {
  return command.optsWithGlobals() as GlobalOptions;
}

export function fail(message: string, code = EXIT_FAILURE): never {
  process.stderr.write(`outbatch: ${message}\n`);
  process.exit(code);
}

/**
 * Runs one command with an app built from the global options: one line on stderr and a
 * non-zero exit for any error, the app (and an embedded server) closed on every path.
 */
export async function runCommand(
  command: Command,
  body: (ctx: CommandContext) => Promise<number | undefined> | Promise<void>,
) {
  const options = globalOptions(command);
  let log: Logger;
  try {
    log = createLogger();
    if (options.databaseUrl) checkDatabaseUrl(options.databaseUrl);
  } catch (error) {
    return fail(errorMessage(error), EXIT_USAGE);
  }
  let app: App;
  try {
    app = createApp({
      databaseUrl: options.databaseUrl,
      schema: options.schema,
      dataDir: options.dataDir,
      logger: log,
    });
  } catch (error) {
    return fail(errorMessage(error), EXIT_USAGE);
  }
  const controller = new AbortController();
  const stopListening = onStopSignals(log, () => controller.abort());
  const json = Boolean(options.json);
  const ctx: CommandContext = {
    app,
    log,
    json,
    signal: controller.signal,
    print(human, data) {
      process.stdout.write(json ? `${JSON.stringify(data, jsonReplacer, 2)}\n` : `${human}\n`);
    },
  };
  let code = 0;
  try {
    code = (await body(ctx)) ?? 0;
  } catch (error) {
    code = exitCodeFor(error);
    process.stderr.write(`outbatch: ${errorMessage(error)}\n`);
    if (!(error instanceof ValidationError || error instanceof ConnectionError)) {
      log.debug({ err: error }, 'command failed');
    }
  } finally {
    await app.close().catch((error) => log.warn({ err: error }, 'closing failed'));
    stopListening();
  }
  process.exitCode = code;
}

function exitCodeFor(error: unknown): number {
  return error instanceof ValidationError ? EXIT_USAGE : EXIT_FAILURE;
}

/** JSON output: bigint positions as strings, dates as ISO strings. */
export function jsonReplacer(_key: string, value: unknown) {
  return typeof value === 'bigint' ? value.toString() : value;
}
