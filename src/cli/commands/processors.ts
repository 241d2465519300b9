/** `outbatch processors`: status and control of batch processors (list, status, pause, resume, promote, ...). */
import type { Command } from 'commander';
import type { ProcessorStatus } from '../../processors/status.js';
import { runCommand } from '../context.js';
import { shortDuration, table } from '../format.js';
import { parseInteger } from '../parse.js';

function formatStatus(list: ProcessorStatus[]): string {
  if (list.length === 0)
    return 'no processors yet (they appear once a worker with them in its code has started)';
  return table(
    [
      'processor',
      'version',
      'state',
      'checkpoint',
      'head',
      'lag',
      'lag age',
      'processed',
      'last run',
      'last error',
    ],
    list.map((p) => [
      p.name,
      `${p.version}${p.active ? '*' : ''}`,
      p.state === 'failed' ? `failed at ${p.failedPosition}` : p.state,
      p.checkpoint,
      p.headPosition ?? '-',
      String(p.lagEvents),
      shortDuration(p.lagSeconds),
      p.eventsProcessed,
      p.lastRunAt?.toISOString() ?? 'never',
      (p.lastError ?? '').split('\n')[0]!.slice(0, 60),
    ]),
  );
}

/** With readUrl: one line on the replica the rows were read from, and who waits for it. */
function formatReplica(list: ProcessorStatus[]): string {
  const view = list.find((p) => p.readReplica)?.readReplica;
  if (!view) return '';
  if (!view.inRecovery) return '\nread on readUrl, which is not a standby (the primary itself?)';
  const behind =
    view.lagBytes > 0
      ? `${shortDuration(view.lagSeconds)} (${view.lagBytes} bytes of WAL) behind`
      : 'caught up';
  const waiting = list.filter((p) => p.readReplica?.waiting).map((p) => `${p.name}@${p.version}`);
  return `\nread on the replica at readUrl, ${behind}${view.replayPaused ? ', replay paused' : ''}${
    waiting.length > 0 ? `; waiting for it: ${waiting.join(', ')}` : ''
  }`;
}

export function registerProcessors(program: Command): void {
  const processors = program.command('processors').description('batch processors: status and control');
  const show = (name: string | undefined, command: Command) =>
    runCommand(command, async ({ app, print }) => {
      const list = await app.processors.status(name);
      print(
        `${formatStatus(list)}${list.length > 0 ? '\n(* = active version)' : ''}${formatReplica(list)}`,
        list,
      );
    });
  processors
    .command('list')
    .description('every processor version: state, checkpoint, head, lag in events and age')
    .action((_options, command: Command) => show(undefined, command));
  processors
    .command('status [name]')
    .description('one processor (or all): state, checkpoint, lag, last run, last error, dead letters')
    .action((name: string | undefined, _options, command: Command) => show(name, command));
  const action = (verb: 'pause' | 'resume' | 'resetFailed', label: string, done: string) =>
    processors
      .command(`${label} <name>`)
      .description(
        `${label === 'reset-failed' ? 'clear a halt after a fix (the event is retried)' : `${label} a processor (every running version)`}`,
      )
      .action((name: string, _options, command: Command) =>
        runCommand(command, async ({ app, print }) => {
          const result = await app.processors[verb](name);
          print(
            result.changed > 0
              ? `processor "${name}" ${done}`
              : `processor "${name}" was already ${label === 'reset-failed' ? 'not failed' : done}`,
            {
              processor: name,
              ...result,
            },
          );
        }),
      );
  processors
    .command('promote <name> <version>')
    .description('make a rebuilt version the active one (refused until it has caught up); the old one stops')
    .option('--reason <text>', 'why, for the audit log')
    .action((name: string, version: string, flags: { reason?: string }, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const result = await app.processors.promote(name, parseInteger(version, 'version'), {
          reason: flags.reason,
        });
        print(
          `processor "${name}" version ${result.active} is now active${result.previous === null ? '' : `; version ${result.previous} stopped (its data is yours to drop)`}`,
          { processor: name, ...result },
        );
      }),
    );
  action('pause', 'pause', 'paused');
  action('resume', 'resume', 'resumed');
  action('resetFailed', 'reset-failed', 'reset; its next run retries the event');
}
