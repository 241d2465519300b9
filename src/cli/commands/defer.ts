/** `outbatch defer`: enqueue a job for a task by name. */
import type { Command } from 'commander';
import { parseDurationText } from '../../duration.js';
import { ValidationError } from '../../errors.js';
import { ON_CONFLICT_MODES, type OnConflict } from '../../jobs/defer.js';
import type { DeferOptions } from '../../jobs/task.js';
import { traceOption } from '../../trace/tracing.js';
import { runCommand } from '../context.js';
import { parseInteger, parseJson } from '../parse.js';

interface DeferFlags {
  args?: string;
  queue?: string;
  runAt?: string;
  delay?: string;
  lock?: string;
  queueingLock?: string;
  priority?: string;
  onConflict?: string;
  group?: string;
  traceparent?: string;
  tracestate?: string;
}

export function registerDefer(program: Command): void {
  program
    .command('defer <task>')
    .description('enqueue a job for a task (by name; a worker that knows the task runs it)')
    .option('--args <json>', 'job arguments as JSON (default {})')
    .option('--queue <name>', "queue (default: the task's registered queue, else 'default')")
    .option('--run-at <time>', 'ISO 8601 time to run at, e.g. 2030-01-31T09:00:00Z')
    .option('--delay <duration>', 'run after this long: 90s, 5m, 2h, 1d or PT5M')
    .option('--lock <key>', 'at most one job per lock runs at a time, in creation order')
    .option('--queueing-lock <key>', 'at most one job per queueing lock waits at a time')
    .option(
      '--on-conflict <mode>',
      'with --queueing-lock already waiting: error (default), ignore, replace (args and run time: debounce) or replace-args',
    )
    .option('--priority <n>', 'higher runs first (default 0)')
    .option('--group <key>', "the job's group within its queue, for per-group limits (docs/limits.md)")
    .option('--traceparent <value>', 'W3C traceparent the job continues (shown by jobs show as "caused by")')
    .option('--tracestate <value>', 'W3C tracestate that goes with --traceparent')
    .action((task: string, flags: DeferFlags, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        // Everything is checked before the database is touched.
        const options: DeferOptions = {
          queue: flags.queue,
          runAt: flags.runAt,
          delay: flags.delay === undefined ? undefined : parseDurationText(flags.delay, '--delay'),
          lock: flags.lock,
          queueingLock: flags.queueingLock,
          priority: flags.priority === undefined ? undefined : parseInteger(flags.priority, '--priority'),
          onConflict: flags.onConflict as OnConflict | undefined,
          group: flags.group,
          traceparent: flags.traceparent,
          tracestate: flags.tracestate,
        };
        traceOption(options, '--');
        if (flags.onConflict !== undefined && !ON_CONFLICT_MODES.includes(flags.onConflict as OnConflict)) {
          throw new ValidationError(
            `--on-conflict "${flags.onConflict}" is invalid: expected ${ON_CONFLICT_MODES.join(', ')}`,
          );
        }
        const result = await app.defer(
          task,
          flags.args === undefined
            ? {}
            : parseJson(flags.args, '--args', `expected e.g. --args '{"to":"a@example.com"}'`),
          options,
        );
        print(
          result.enqueued
            ? `deferred job ${result.id} (task ${task})`
            : result.replaced
              ? `replaced the ${flags.onConflict === 'replace' ? 'args and run time' : 'args'} of job ${result.existingId}, waiting with queueing lock "${flags.queueingLock}"`
              : `not deferred: job ${result.existingId} with queueing lock "${flags.queueingLock}" is already waiting`,
          result,
        );
      }),
    );
}
