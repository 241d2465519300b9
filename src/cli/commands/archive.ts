/** `outbatch events archive | import | retention`: the event log over years (docs/event-log.md). */
import type { Command } from 'commander';
import type { ArchiveResult } from '../../events/archive.js';
import { parseKeepDays } from '../../events/retention.js';
import { runCommand } from '../context.js';
import { table } from '../format.js';
import { makeProgress } from '../progress.js';

function describeArchive(result: ArchiveResult): string {
  const gone = result.partitions
    .map((p) => `${p.partition} [${p.from}, ${p.to}) ${p.events} event(s)`)
    .join(', ');
  const lines = [
    result.dryRun
      ? result.partitions.length === 0
        ? 'dry run, nothing written: no partition may be archived'
        : `dry run, nothing written: would archive ${result.events} event(s) from ${result.partitions.length} partition(s): ${gone}`
      : result.partitions.length === 0
        ? 'nothing archived: no partition may be archived'
        : `archived ${result.events} event(s) from ${result.partitions.length} partition(s) to ${result.file} (SHA-256 ${result.sha256}, verified), dropped: ${gone}`,
  ];
  if (result.stopped) lines.push(`${result.stopped.partition} stays: ${result.stopped.reason}`);
  lines.push(`archived horizon: ${result.horizon}`);
  return lines.join('\n');
}

/** Registered on the `events` command. */
export function registerArchive(events: Command): void {
  events
    .command('archive')
    .description(
      'write whole partitions that every processor passed and retention allows to a verified .ndjson.gz file, then drop them',
    )
    .requiredOption('--before <point>', 'an event position (partitions ending at or below it) or an ISO time')
    .option('--to <file>', 'the .ndjson.gz file to write (required unless --dry-run)')
    .option('--dry-run', 'report what would be archived and why the rest stays; write nothing')
    .action((flags: { before: string; to?: string; dryRun?: boolean }, command: Command) =>
      runCommand(command, async ({ app, print, json }) => {
        let progress: ReturnType<typeof makeProgress> | undefined;
        const result = await app.events.archive({
          before: flags.before,
          to: flags.to,
          dryRun: flags.dryRun,
          onProgress: json
            ? undefined
            : (done, total) => {
                progress ??= makeProgress('archive', total);
                progress.update(done);
              },
        });
        progress?.finish();
        print(describeArchive(result), result);
      }),
    );

  events
    .command('import <file>')
    .description(
      'bring an archive file back, positions, tx ids and order preserved, into the schema given by --schema (migrated first if new)',
    )
    .option(
      '--archived-in <schema>',
      'the schema the archive was made in: its record of the file is checked too',
    )
    .action((file: string, flags: { archivedIn?: string }, command: Command) =>
      runCommand(command, async ({ app, print, json }) => {
        let progress: ReturnType<typeof makeProgress> | undefined;
        let phase: string | undefined;
        const result = await app.events.importArchive({
          file,
          archivedIn: flags.archivedIn,
          onProgress: json
            ? undefined
            : (at, done, total) => {
                // The check of a small file is over before a bar would say anything.
                if (at === 'verify' && done < 10_000) return;
                if (at !== phase) {
                  progress?.finish();
                  phase = at;
                  progress = makeProgress(at === 'verify' ? 'verify' : 'import', total);
                }
                progress?.update(done);
              },
        });
        progress?.finish();
        print(
          `imported ${result.events} event(s)` +
            (result.first === undefined ? '' : ` (positions ${result.first}-${result.last})`) +
            ` into schema "${result.schema}"; file SHA-256 ${result.sha256}` +
            (result.checkedAgainst > 0 ? `, matching its archive record` : ', no archive record named it') +
            (result.partitionsCreated.length > 0 ? `; created ${result.partitionsCreated.join(', ')}` : ''),
          result,
        );
        if (result.txIdsAhead) {
          process.stderr.write(
            `outbatch: the imported transaction ids (up to ${result.txIdsAhead.highestStored}) are ahead of this server's (${result.txIdsAhead.nextServer}): readers will not see those events until you stop the workers on schema "${result.schema}" and run "outbatch --schema ${result.schema} events rebase-tx-ids --yes"\n`,
          );
        }
      }),
    );

  const retention = events
    .command('retention')
    .description('which events an archive may take out of the database (default: kept forever)');
  retention
    .command('set')
    .description(
      'keep the events of a stream prefix and/or type N days (and until every processor passed them), or forever',
    )
    .option('--stream-prefix <prefix>', 'streams starting with this (default: every stream)', '')
    .option('--type <type>', 'only this event type (default: every type)', '')
    .requiredOption('--keep-days <days>', 'a whole number of days, or "forever"')
    .action((flags: { streamPrefix: string; type: string; keepDays: string }, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const policy = await app.events.retention.set({
          streamPrefix: flags.streamPrefix,
          type: flags.type,
          keepDays: parseKeepDays(flags.keepDays),
        });
        print(
          `retention: stream prefix ${JSON.stringify(policy.streamPrefix)}, ${policy.type ? `type ${policy.type}` : 'any type'}: ${policy.keepDays === 'forever' ? 'kept forever' : `kept ${policy.keepDays} days`}`,
          policy,
        );
      }),
    );
  retention
    .command('list')
    .description('every retention policy')
    .action((_flags: unknown, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const policies = await app.events.retention.list();
        print(
          policies.length === 0
            ? 'no retention policy: every event is kept forever'
            : table(
                ['stream prefix', 'type', 'keep'],
                policies.map((p) => [
                  JSON.stringify(p.streamPrefix),
                  p.type || '(any)',
                  p.keepDays === 'forever' ? 'forever' : `${p.keepDays} days`,
                ]),
              ),
          policies,
        );
      }),
    );
  retention
    .command('remove')
    .description('remove one policy (its events fall back to a shorter prefix, or forever)')
    .option('--stream-prefix <prefix>', "the policy's stream prefix (default: every stream)", '')
    .option('--type <type>', "the policy's type (default: every type)", '')
    .action((flags: { streamPrefix: string; type: string }, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        await app.events.retention.remove({ streamPrefix: flags.streamPrefix, type: flags.type });
        print(
          `retention policy for stream prefix ${JSON.stringify(flags.streamPrefix)} and ${flags.type ? `type ${flags.type}` : 'any type'} removed`,
          { removed: { streamPrefix: flags.streamPrefix, type: flags.type } },
        );
      }),
    );
}
