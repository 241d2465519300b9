#!/usr/bin/env node
/** The `outbatch` command line: builds the program from the command files and runs it. */
import { Command, CommanderError, Option } from 'commander';
import { packageVersion } from '../packageRoot.js';
import { registerAppend } from './commands/append.js';
import { registerArchive } from './commands/archive.js';
import { registerDashboard } from './commands/dashboard.js';
import { registerDb } from './commands/db.js';
import { registerDefer } from './commands/defer.js';
import { registerDemo } from './commands/demo.js';
import { registerDoctor } from './commands/doctor.js';
import { registerEvents } from './commands/events.js';
import { registerJobs } from './commands/jobs.js';
import { registerMigrate } from './commands/migrate.js';
import { registerProcessors } from './commands/processors.js';
import { registerQueues } from './commands/queues.js';
import { registerRedrive } from './commands/redrive.js';
import { registerReplay } from './commands/replay.js';
import { registerSchedules } from './commands/schedules.js';
import { registerWorker } from './commands/worker.js';
import { EXIT_USAGE } from './context.js';

export function buildProgram(): Command {
  const program = new Command('outbatch')
    .description('PostgreSQL-only event outbox, batch processors and job queue')
    .version(packageVersion(), '-V, --version')
    .addOption(
      new Option('--database-url <url>', 'postgres:// URL (default: embedded PostgreSQL)').env(
        'DATABASE_URL',
      ),
    )
    .addOption(
      new Option('--schema <name>', 'schema holding the outbatch tables')
        .env('OUTBATCH_SCHEMA')
        .default('outbatch'),
    )
    .addOption(
      new Option('--data-dir <path>', 'embedded server data folder (default .outbatch/pg)').env(
        'OUTBATCH_DATA_DIR',
      ),
    )
    .option('--json', 'machine-readable output')
    .showSuggestionAfterError(true)
    .enablePositionalOptions(false)
    .configureOutput({
      // Commander's own errors ("unknown option '--x'") become one "outbatch: ..." line.
      outputError: (message, write) => write(`outbatch: ${message.replace(/^error: /, '').split('\n')[0]}\n`),
    });
  registerMigrate(program);
  registerDb(program);
  registerDoctor(program);
  registerDemo(program);
  registerAppend(program);
  registerEvents(program);
  registerWorker(program);
  registerDefer(program);
  registerJobs(program);
  registerProcessors(program);
  registerQueues(program);
  registerSchedules(program);
  registerReplay(program);
  registerDashboard(program);
  registerRedrive(program.commands.find((command) => command.name() === 'events')!);
  registerArchive(program.commands.find((command) => command.name() === 'events')!);
  program.commands.forEach(applyExitOverride);
  applyExitOverride(program);
  return program;
}

function applyExitOverride(command: Command): void {
  command.exitOverride();
  command.commands.forEach(applyExitOverride);
}

async function main(): Promise<void> {
  const program = buildProgram();
  if (process.argv.length <= 2) {
    program.outputHelp();
    return;
  }
  try {
    await program.parseAsync(process.argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version also end here, with exit code 0.
      process.exitCode = error.exitCode === 0 ? 0 : EXIT_USAGE;
      return;
    }
    throw error;
  }
}

await main();
