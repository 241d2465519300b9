/** `outbatch events`: tail, show, partition(s) and rebase-tx-ids on the event log. */
import type { Command } from 'commander';
import { fromEvent, lastValueFrom, takeUntil, tap } from 'rxjs';
import { ValidationError } from '../../errors.js';
import { parseCheckpoint } from '../../events/checkpoint.js';
import type { StoredEvent } from '../../events/storedEvent.js';
import { jsonReplacer, runCommand } from '../context.js';
import { formatBytes } from '../format.js';
import { parseCount } from '../parse.js';

interface TailFlags {
  follow?: boolean;
  type?: string[];
  streamPrefix?: string;
  limit: string;
  after?: string;
}

export function registerEvents(program: Command): void {
  const events = program.command('events').description('read the event log');

  events
    .command('tail')
    .description('print the newest events (gap-safe order); --follow keeps printing new ones')
    .option('-f, --follow', 'keep printing events as they are appended (Ctrl-C stops)')
    .option('--type <type...>', 'only these event types')
    .option('--stream-prefix <prefix>', 'only streams starting with this')
    .option('-n, --limit <n>', 'how many of the newest events to print first', '20')
    .option('--after <checkpoint>', 'print every event after this checkpoint instead of the newest')
    .action((flags: TailFlags, command: Command) =>
      runCommand(command, async ({ app, json, signal }) => {
        const limit = parseCount(flags.limit, '--limit', 1, 100_000);
        const filter = { types: flags.type, streamPrefix: flags.streamPrefix };
        const write = (event: StoredEvent) =>
          process.stdout.write(`${json ? toJson(event) : toLine(event)}\n`);
        let after: string;
        if (flags.after !== undefined) {
          parseCheckpoint(flags.after);
          after = flags.after;
          if (!flags.follow) {
            const page = await app.events.read({ ...filter, after, limit });
            page.events.forEach(write);
            return;
          }
        } else {
          // Head first: anything appended between the two reads is printed by --follow.
          const head = await app.events.head();
          const newest = await app.events.last({ ...filter, limit });
          newest.forEach(write);
          after = newest.at(-1)?.checkpoint ?? head.checkpoint;
        }
        if (!flags.follow) return;
        // Runs until Ctrl-C / SIGTERM; then the LISTEN connection closes with the subscription.
        await lastValueFrom(
          app.events.follow(after, filter).pipe(takeUntil(fromEvent(signal, 'abort')), tap(write)),
          {
            defaultValue: undefined,
          },
        );
      }),
    );

  events
    .command('show <position>')
    .description('print one event in full')
    .action((position: string, _flags: unknown, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const event = await app.events.get(position);
        if (!event) {
          process.stderr.write(`outbatch: no event at position ${position}\n`);
          return 1;
        }
        print(
          [
            `position        ${event.position}`,
            `checkpoint      ${event.checkpoint}`,
            `stream          ${event.stream} (version ${event.streamVersion})`,
            `type            ${event.type} (version ${event.version}, as stored: the CLI has no upcasters)`,
            `recorded at     ${event.recordedAt.toISOString()}`,
            `idempotency key ${event.idempotencyKey ?? '-'}`,
            `metadata        ${JSON.stringify(event.metadata)}`,
            `data            ${JSON.stringify(event.data, null, 2)}`,
          ].join('\n'),
          event,
        );
      }),
    );

  events
    .command('partitions')
    .description('list the partitions of the event log, its size and the archived horizon')
    .action((_flags: unknown, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const status = await app.events.logStatus();
        const lines =
          status.layout === 'unpartitioned'
            ? [
                `events is one unpartitioned table: ~${status.estimatedEvents} events, ${formatBytes(status.bytes)}`,
                'convert it online with: outbatch events partition',
              ]
            : [
                `${status.partitions.length} partitions, ~${status.estimatedEvents} events, ${formatBytes(status.bytes)}; ` +
                  `position ${status.reachedPosition} reached; new partitions hold ${status.partitionSize} events, ${status.partitionsAhead} kept ahead`,
                `archived through ${status.archivedThrough ?? '- (nothing archived)'}`,
                ...status.partitions.map(
                  (p) =>
                    `  ${p.name.padEnd(28)} ${p.lower === null ? 'default (overflow)'.padEnd(30) : `[${p.lower}, ${p.upper})`.padEnd(30)} ~${String(p.estimatedEvents).padStart(10)} events  ${formatBytes(p.bytes)}`,
                ),
                ...(status.overflowEvents > 0
                  ? [
                      `${status.overflowEvents} events are in events_overflow: partitions fell behind the appends (is a worker running?)`,
                    ]
                  : []),
              ];
        print(lines.join('\n'), status);
      }),
    );

  events
    .command('partition')
    .description(
      'convert an unpartitioned event log to partitions by position, online (appends and reads go on)',
    )
    .option('--size <events>', 'events per partition from now on (default 10000000)')
    .option('--lock-timeout <ms>', 'how long each attempt at the final swap waits for its lock', '2000')
    .action((flags: { size?: string; lockTimeout: string }, command: Command) =>
      runCommand(command, async ({ app, print, json }) => {
        const size = flags.size === undefined ? undefined : parseCount(flags.size, '--size', 100, 1e12);
        const lockTimeoutMs = parseCount(flags.lockTimeout, '--lock-timeout', 1, 600_000);
        const say = (text: string) => {
          if (!json) process.stderr.write(`${text}\n`);
        };
        const started = Date.now();
        const result = await app.events.partition({
          ...(size !== undefined && { partitionSize: size }),
          lockTimeoutMs,
          onProgress: (step) => {
            if (step.step === 'validating') {
              say(
                `checking that the ${step.events} stored events are below position ${step.bound} (a scan; appends and reads go on)...`,
              );
            } else if (step.step === 'waiting') {
              say(`attempt ${step.attempt}: ${step.reason}; trying again`);
            } else if (step.step === 'swapping' && step.attempt === 1) {
              say(
                `checked in ${((Date.now() - started) / 1000).toFixed(1)} s; swapping in the partitioned table...`,
              );
            }
          },
        });
        print(
          result.converted
            ? `events is partitioned by position; created ${result.partitions.join(', ') || 'no new partition'}`
            : 'events is already partitioned: nothing to do',
          result,
        );
      }),
    );

  events
    .command('rebase-tx-ids')
    .description(
      'after a pg_dump restore: rewrite stored transaction ids (events, processor checkpoints, dead letters), in order, below the server (stop workers first)',
    )
    .option('--yes', 'really rewrite them')
    .action((flags: { yes?: boolean }, command: Command) =>
      runCommand(command, async ({ app, print, json }) => {
        if (!flags.yes) {
          throw new ValidationError(
            'rebase-tx-ids rewrites every stored transaction id: stop workers and appenders, back up, then run it again with --yes',
          );
        }
        const result = await app.events.rebaseTxIds((done, total) => {
          if (!json) process.stderr.write(`consumed ${done}/${total} transaction ids\n`);
        });
        print(
          `rebased ${result.distinctIds} transaction id(s) on ${result.eventsUpdated} event(s), ${result.checkpointsUpdated} processor checkpoint(s) and ${result.deadLettersUpdated} dead letter(s) to 3..${result.highestNew}` +
            (result.consumed ? ` (consumed ${result.consumed} transaction ids first)` : '') +
            '; checkpoints kept outside this database must be taken again (see docs/operations.md)',
          result,
        );
      }),
    );
}

function toJson(event: StoredEvent): string {
  return JSON.stringify(event, jsonReplacer);
}

function toLine(event: StoredEvent): string {
  const data = JSON.stringify(event.data);
  return `${String(event.position).padStart(8)}  ${event.recordedAt.toISOString()}  ${event.stream}@${event.streamVersion}  ${event.type}  ${data.length > 120 ? `${data.slice(0, 117)}...` : data}`;
}
