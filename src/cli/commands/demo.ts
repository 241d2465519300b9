import type { Command } from 'commander';
import { ValidationError } from '../../errors.js';
import { globalOptions, runCommand } from '../context.js';
import { parseInteger } from './defer.js';

/** What pipelines/shop/demo.ts exports (kept here: src/ is built without pipelines/). */
interface DemoModule {
  runDemo(options: {
    databaseUrl?: string;
    schema?: string;
    dataDir?: string;
    shopSchema: string;
    durationSeconds?: number;
    rate?: number;
    signal: AbortSignal;
    out: NodeJS.WriteStream;
  }): Promise<unknown>;
}

/** The demo lives in pipelines/ (a checkout), so it is loaded from there at run time. */
async function loadDemo(): Promise<DemoModule> {
  try {
    return await import(new URL('../../../pipelines/shop/demo.js', import.meta.url).href);
  } catch (error) {
    throw new ValidationError(
      `the demo runs from a checkout of outbatch: use "npm start" there (${(error as Error).message.split('\n')[0]})`,
    );
  }
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('the main job: a simulated shop, the worker, the processors and a live view (Ctrl-C stops)')
    .option('--duration <seconds>', 'stop after this many seconds')
    .option('--rate <orders>', 'simulated orders per second (default 20)')
    .option('--shop-schema <name>', "schema of the demo shop's tables", 'shop')
    .action((flags: { duration?: string; rate?: string; shopSchema: string }, command: Command) =>
      runCommand(command, async ({ signal, print }) => {
        const options = globalOptions(command);
        const { runDemo } = await loadDemo();
        const summary = await runDemo({
          databaseUrl: options.databaseUrl,
          schema: options.schema,
          dataDir: options.dataDir,
          shopSchema: flags.shopSchema,
          durationSeconds:
            flags.duration === undefined ? undefined : parseInteger(flags.duration, '--duration'),
          rate: flags.rate === undefined ? undefined : parseInteger(flags.rate, '--rate'),
          signal,
          out: options.json ? process.stderr : process.stdout,
        });
        if (options.json) print('', summary);
      }),
    );
}
