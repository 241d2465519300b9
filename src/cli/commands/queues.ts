/** `outbatch queues`: show and change queue limits and pauses (docs/limits.md). */
import type { Command } from 'commander';
import { parseDurationText } from '../../duration.js';
import type { QueueLimits } from '../../jobs/limits.js';
import { parseLimitsText } from '../../jobs/queueControl.js';
import { runCommand } from '../context.js';
import { table } from '../format.js';

interface SetFlags {
  concurrency?: string;
  groupConcurrency?: string;
  rate?: string;
  groupRate?: string;
}

function perText(ms: number): string {
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1_000],
  ] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

export function formatLimits(list: QueueLimits[]): string {
  if (list.length === 0) return 'no queue has limits (every queue is claimed without them)';
  return table(
    [
      'queue',
      'concurrency',
      'group conc.',
      'rate',
      'group rate',
      'running',
      'waiting',
      'window',
      'paused until',
    ],
    list.map((l) => [
      l.queue,
      l.concurrency === null ? '-' : String(l.concurrency),
      l.groupConcurrency === null ? '-' : String(l.groupConcurrency),
      l.rate ? `${l.rate.max}/${perText(l.rate.perMs)}` : '-',
      l.groupRate ? `${l.groupRate.max}/${perText(l.groupRate.perMs)}` : '-',
      String(l.running),
      String(l.waiting),
      l.rate ? `${l.windowUsed}/${l.rate.max}` : '-',
      `${l.pausedUntil?.toISOString() ?? '-'}${l.groupsPaused > 0 ? ` (+${l.groupsPaused} groups)` : ''}`,
    ]),
  );
}

export function registerQueues(program: Command): void {
  const queues = program
    .command('queues')
    .description('queue limits and pauses, enforced across every worker');
  queues
    .command('list')
    .description('every queue with limits or a pause: limits, running and waiting jobs, rate window')
    .action((_options, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const list = await app.queues.limits();
        print(formatLimits(list), list);
      }),
    );
  queues
    .command('show <queue>')
    .description("one queue's limits, running and waiting jobs")
    .action((queue: string, _options, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const limits = await app.queues.limits(queue);
        print(limits ? formatLimits([limits]) : `queue "${queue}" has no limits`, limits ?? null);
      }),
    );
  queues
    .command('set <queue>')
    .description('set limits of a queue (none removes one); they apply from the next claim of every worker')
    .option('--concurrency <n>', 'jobs of the queue running at once, across every worker (or none)')
    .option('--group-concurrency <n>', 'jobs of one group (defer --group) running at once (or none)')
    .option('--rate <max/per>', 'at most <max> starts per <per>, e.g. 60/1h (or none)')
    .option('--group-rate <max/per>', 'the same for each group, e.g. 10/1m (or none)')
    .action((queue: string, flags: SetFlags, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const limits = parseLimitsText(flags, {
          concurrency: '--concurrency',
          groupConcurrency: '--group-concurrency',
          rate: '--rate',
          groupRate: '--group-rate',
        });
        const after = await app.queues.configure(queue, limits);
        print(after ? formatLimits([after]) : `queue "${queue}" has no limits left`, after ?? null);
      }),
    );
  queues
    .command('pause <queue>')
    .description('no job of the queue starts until resumed, or for --for; running jobs go on')
    .option('--for <duration>', 'pause this long: 90s, 5m, 2h, 1d (default: 100 years, until resumed)')
    .action((queue: string, flags: { for?: string }, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const ms = flags.for === undefined ? 100 * 365 * 86_400_000 : parseDurationText(flags.for, '--for');
        await app.queues.pause(queue, { for: ms });
        print(`queue "${queue}" paused${flags.for === undefined ? '' : ` for ${flags.for}`}`, {
          queue,
          paused: true,
        });
      }),
    );
  queues
    .command('resume <queue>')
    .description('end a pause of the queue and of its groups')
    .action((queue: string, _options, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        await app.queues.resume(queue);
        print(`queue "${queue}" resumed`, { queue, paused: false });
      }),
    );
  queues
    .command('clear <queue>')
    .description('remove every limit and pause of the queue')
    .action((queue: string, _options, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const cleared = await app.queues.clear(queue);
        print(cleared ? `queue "${queue}" has no limits now` : `queue "${queue}" had no limits`, {
          queue,
          cleared,
        });
      }),
    );
}
