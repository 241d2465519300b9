/**
 * `outbatch demo [options]` runs the demo program, pipelines/shop/start (`npm start` in a
 * checkout), as a child process with the same options: the program owns its flags, its help
 * and its exit codes, so there is one definition of the demo's interface. The package ships
 * it compiled beside the CLI (dist/pipelines/ next to dist/src/), so the same relative path
 * finds it in a checkout (.ts, run through this process's tsx loader) and once installed (.js).
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';

const extension = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
export const DEMO_PROGRAM = fileURLToPath(
  new URL(`../../../pipelines/shop/start.${extension}`, import.meta.url),
);

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('run the shop demo: orders, processors, jobs and the dashboard ("outbatch demo --help")')
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .argument('[options...]', 'passed to the demo program')
    .action(async (args: string[], _flags: unknown, command: Command) => {
      process.exitCode = await runProgram(DEMO_PROGRAM, [...globalFlags(command.parent!), ...args]);
    });
}

/** outbatch's own options given before or after `demo` (`--schema x demo`) are the demo's too. */
function globalFlags(program: Command): string[] {
  const flags: string[] = [];
  for (const [key, flag] of [
    ['databaseUrl', '--database-url'],
    ['schema', '--schema'],
    ['dataDir', '--data-dir'],
  ] as const) {
    if (program.getOptionValueSource(key) === 'cli') flags.push(flag, String(program.getOptionValue(key)));
  }
  if (program.getOptionValue('json') === true) flags.push('--json');
  return flags;
}

function runProgram(file: string, args: string[]): Promise<number> {
  const child = spawn(process.execPath, [...process.execArgv, file, ...args], { stdio: 'inherit' });
  // Ctrl-C reaches the child too (same process group): it stops cleanly on the first and
  // exits on the second; this process only waits. A signal sent to this process alone is
  // passed on.
  const forward = (signal: NodeJS.Signals) => child.kill(signal);
  process.on('SIGINT', () => {});
  process.on('SIGTERM', forward);
  return new Promise((resolve) => {
    child.on('error', (error) => {
      process.stderr.write(`outbatch demo: ${error.message}\n`);
      resolve(1);
    });
    child.on('close', (code, signal) => resolve(code ?? (signal === 'SIGINT' ? 130 : 1)));
  });
}
