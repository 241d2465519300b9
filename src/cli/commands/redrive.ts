/** `outbatch events replay`: re-drive a range of events to a task. */
import type { Command } from 'commander';
import { runCommand } from '../context.js';
import { parseInteger } from '../parse.js';
import { makeProgress } from '../progress.js';

/** `outbatch events replay`: re-drive a range of events to a task (registered on the `events` command). */
export function registerRedrive(events: Command): void {
  events
    .command('replay')
    .description(
      'defer jobs of a task carrying the matching events of a range, so side effects can be redone',
    )
    .requiredOption('--from <point>', 'start, an event position, or an ISO time')
    .option('--to <point>', 'an event position (included) or an ISO time (default: the head)')
    .option('--types <list>', 'comma-separated event types')
    .option('--stream-prefix <prefix>', 'only streams starting with this')
    .requiredOption('--to-task <task>', 'the task receiving { event } (or { events } with --batch)')
    .option('--batch <n>', 'events per job (default 1)')
    .option('--dry-run', 'count the events; defer nothing')
    .action(
      (
        flags: {
          from: string;
          to?: string;
          types?: string;
          streamPrefix?: string;
          toTask: string;
          batch?: string;
          dryRun?: boolean;
        },
        command: Command,
      ) =>
        runCommand(command, async ({ app, print }) => {
          let progress: ReturnType<typeof makeProgress> | undefined;
          const result = await app.events.redrive({
            from: flags.from,
            to: flags.to,
            types: flags.types
              ?.split(',')
              .map((type) => type.trim())
              .filter(Boolean),
            streamPrefix: flags.streamPrefix,
            task: flags.toTask,
            batch: flags.batch === undefined ? undefined : parseInteger(flags.batch, '--batch'),
            dryRun: flags.dryRun,
            onProgress: (done, total) => {
              progress ??= makeProgress(`re-drive to ${flags.toTask}`, total);
              progress.update(done);
            },
          });
          progress?.finish();
          print(
            flags.dryRun
              ? `dry run, nothing deferred: ${result.events} event(s) match`
              : `${result.events} event(s): ${result.deferred} job(s) of "${flags.toTask}" deferred, ${result.alreadyEnqueued} already waiting`,
            result,
          );
        }),
    );
}
