import type { Command } from 'commander';

/**
 * The demo is a program in a checkout (pipelines/shop/start.ts, run by `npm start`), written
 * against the public API; the published package holds the library and this CLI only. The
 * command stays so that whoever types it, from an installed package, is told where it went.
 */
export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('the demo runs from a checkout of outbatch: "npm install && npm start" there')
    // Whatever flags the old command took, the answer is the same line.
    .allowUnknownOption()
    .allowExcessArguments()
    .action((_flags: unknown, command: Command) =>
      command.error(
        'the demo runs from a checkout of the outbatch repository: run "npm install && npm start" there (pipelines/shop/start.ts; "npm start -- --help" lists its options)',
        { exitCode: 2, code: 'outbatch.demo' },
      ),
    );
}
