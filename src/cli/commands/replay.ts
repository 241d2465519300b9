/** `outbatch replay`: re-process a range of events through a processor, with a plan, a confirmation and progress. */
import readline from 'node:readline/promises';
import type { Command } from 'commander';
import { ValidationError } from '../../errors.js';
import { countLiveWorkers } from '../../jobs/inspect.js';
import type { ReplayPlan } from '../../processors/replay.js';
import { type CommandContext, runCommand } from '../context.js';
import { table } from '../format.js';
import { parseInteger } from '../parse.js';
import { makeProgress } from '../progress.js';

interface ReplayFlags {
  from?: string;
  to?: string;
  version?: string;
  dryRun?: boolean;
  yes?: boolean;
  wait: boolean;
  reason?: string;
  rebuild?: boolean;
  history?: boolean;
  detach?: boolean;
}

/** Asks on a terminal; refuses without --yes anywhere else (a script must say it means it). */
async function confirm(question: string, yes: boolean | undefined): Promise<void> {
  if (yes) return;
  if (!process.stdin.isTTY) {
    throw new ValidationError(
      'this changes a processor: pass --yes to confirm (standard input is not a terminal)',
    );
  }
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  const answer = await rl.question(`${question} [y/N] `);
  rl.close();
  if (!/^y(es)?$/i.test(answer.trim())) throw new ValidationError('not confirmed: nothing changed');
}

/** Watches the workers re-process the range, with a progress bar, until done or Ctrl-C. */
async function follow(ctx: CommandContext, name: string, version: number, total: number, through?: string) {
  if ((await countLiveWorkers((await ctx.app.database()).pool, ctx.app.schema)) === 0) {
    ctx.log.warn(
      'no live worker: the replay proceeds when one runs ("outbatch worker --app <module>"); Ctrl-C stops watching',
    );
  }
  const progress = makeProgress(`${name} v${version}`, total);
  for (;;) {
    const remaining = await ctx.app.processors.remaining(name, version, through);
    progress.update(Math.max(0, total - remaining));
    if (remaining === 0 || ctx.signal.aborted) break;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  progress.finish();
}

function describePlan(plan: ReplayPlan): string {
  const types = plan.byType.map((t) => `${t.type}: ${t.count}`).join(', ') || 'none';
  return `processor "${plan.processor}" version ${plan.version}: ${plan.events} event(s) from checkpoint ${plan.checkpoint}${plan.through ? ` through ${plan.through}` : ' to the head'} (${types}); current checkpoint ${plan.previous}`;
}

export function registerReplay(program: Command): void {
  program
    .command('replay [processor]')
    .description(
      'rewind a processor to re-run its pipeline, rebuild it beside the live one, or list past replays',
    )
    .option('--from <point>', 'start, an event position, or an ISO time')
    .option('--to <point>', 'an event position (included) or an ISO time (default: the head)')
    .option('--version <n>', 'the version to rewind (default: the active one)')
    .option('--dry-run', 'print how many events of which types would be replayed; change nothing')
    .option('--yes', 'do not ask for confirmation (required when not on a terminal)')
    .option('--no-wait', 'fail at once if a run is in progress, instead of waiting for it')
    .option('--reason <text>', 'why, for the audit log')
    .option('--rebuild', 'run a new version from the start beside the live one (see processors promote)')
    .option('--history', 'list past rewinds, rebuilds and promotions')
    .option('--detach', 'return once the checkpoint moved, without watching the workers re-process')
    .action((name: string | undefined, flags: ReplayFlags, command: Command) =>
      runCommand(command, async (ctx) => {
        const { app, print } = ctx;
        if (flags.history) {
          const rows = await app.processors.history(name);
          print(
            rows.length === 0
              ? 'no replays, rebuilds or promotions yet'
              : table(
                  ['when', 'who', 'host', 'action', 'processor', 'details'],
                  rows.map((r) => [
                    r.at.toISOString(),
                    r.actor,
                    r.host,
                    r.action,
                    r.processor,
                    JSON.stringify(r.details),
                  ]),
                ),
            rows,
          );
          return;
        }
        if (!name) throw new ValidationError('replay needs a processor name (or --history)');
        if (flags.rebuild) {
          if (flags.from || flags.to)
            throw new ValidationError('--rebuild starts from the beginning: leave out --from and --to');
          await confirm(`rebuild processor "${name}" as a new version beside the live one?`, flags.yes);
          const { version } = await app.processors.rebuild(name, { reason: flags.reason });
          const total = await app.processors.remaining(name, version);
          if (!flags.detach) await follow(ctx, name, version, total);
          print(
            `processor "${name}" version ${version} is rebuilding from the start (${total} events); promote it with "outbatch processors promote ${name} ${version}" once it has caught up`,
            { processor: name, version, events: total },
          );
          return;
        }
        if (!flags.from)
          throw new ValidationError('--from is required: start, an event position, or an ISO time');
        const options = {
          from: flags.from,
          to: flags.to,
          version: flags.version === undefined ? undefined : parseInteger(flags.version, '--version'),
          wait: flags.wait,
          reason: flags.reason,
        };
        const plan = await app.processors.replay(name, { ...options, dryRun: true });
        if (flags.dryRun) {
          print(`dry run, nothing changed: ${describePlan(plan)}`, plan);
          return;
        }
        await confirm(`replay ${describePlan(plan)}?`, flags.yes);
        const applied = await app.processors.replay(name, {
          ...options,
          onWait: () =>
            process.stderr.write(
              `processor "${name}" is running a batch: waiting for it to finish (--no-wait fails instead)\n`,
            ),
        });
        if (!flags.detach) await follow(ctx, name, applied.version, applied.events, applied.through);
        print(`replayed: ${describePlan(applied)}`, applied);
      }),
    );
}
