/** `outbatch jobs`: list, show, retry, cancel, delete and stats, through the app.jobs API. */
import type { Command } from 'commander';
import { OutbatchError, ValidationError } from '../../errors.js';
import type { ActionResult, JobStats } from '../../jobs/control.js';
import type { JobSummary } from '../../jobs/inspect.js';
import { toDate } from '../../jobs/validate.js';
import { runCommand } from '../context.js';
import { table } from '../format.js';
import { parseInteger } from '../parse.js';

function formatList(jobs: JobSummary[]): string {
  if (jobs.length === 0) return 'no jobs';
  return table(
    ['id', 'task', 'queue', 'state', 'attempts', 'run_at', 'lock', 'error'],
    jobs.map((job) => [
      job.id,
      job.task,
      job.queue,
      job.state,
      `${job.attempts}/${job.max_attempts}`,
      job.run_at.toISOString(),
      job.lock ?? '',
      (job.error ?? '').split('\n')[0]!.slice(0, 60),
    ]),
  );
}

function formatStats(stats: JobStats[]): string {
  if (stats.length === 0) return 'no jobs and no statistics yet';
  // Below the table, where a glance at the end of the output finds it.
  const orphaned = stats
    .filter((s) => s.withoutWorker > 0)
    .map((s) => `no live worker knows task ${s.task}: ${s.withoutWorker} job(s) waiting`);
  const grid = table(
    [
      'task',
      'todo',
      'scheduled',
      'doing',
      'dirty',
      'failed',
      'cancelled',
      'succeeded',
      'retried',
      'avg ms',
      'max ms',
      'batch',
    ],
    stats.map((s) => [
      s.task,
      String(s.now.todo),
      String(s.now.scheduled),
      String(s.now.doing),
      String(s.now.dirty),
      String(s.now.failed),
      String(s.now.cancelled),
      String(s.succeeded),
      String(s.retried),
      s.avg_duration_ms === null ? '' : String(s.avg_duration_ms),
      s.max_duration_ms === null ? '' : String(s.max_duration_ms),
      s.batch === null ? '' : `up to ${s.batch.size}, ${s.batch.maxWaitMs} ms`,
    ]),
  );
  return [grid, ...orphaned].join('\n');
}

function formatAction(verb: string, result: ActionResult): string {
  const lines = [
    `${verb} ${result.done.length} job(s)${result.done.length ? `: ${result.done.join(', ')}` : ''}`,
  ];
  for (const skip of result.skipped) lines.push(`skipped job ${skip.id}: ${skip.reason}`);
  return lines.join('\n');
}

export function registerJobs(program: Command): void {
  const jobs = program.command('jobs').description('inspect and act on jobs');

  jobs
    .command('list')
    .description('list jobs (default: every state, oldest first)')
    .option('--status <state>', 'todo, scheduled, doing, dirty, failed, cancelled or succeeded')
    .option('--task <name>', 'only this task')
    .option('--queue <name>', 'only this queue')
    .option('--limit <n>', 'at most this many (default 100)')
    .action((flags: { status?: string; task?: string; queue?: string; limit?: string }, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const limit = flags.limit === undefined ? undefined : parseInteger(flags.limit, '--limit');
        const rows = await app.jobs.list({ ...flags, limit });
        print(formatList(rows), rows);
      }),
    );

  jobs
    .command('show <id>')
    .description('one job with its arguments and error history')
    .action((id: string, _flags, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const job = await app.jobs.show(id);
        if (!job) throw new OutbatchError('OUTBATCH_NOT_FOUND', `job ${id} not found`);
        const lines = [
          `job ${job.id}: ${job.task} on queue ${job.queue}, ${job.state}, attempt ${job.attempts}/${job.max_attempts}`,
          `run_at ${job.run_at.toISOString()}  created ${job.created_at.toISOString()}  priority ${job.priority}`,
          `lock ${job.lock ?? '-'}  queueing lock ${job.queueing_lock ?? '-'}  group ${job.group ?? '-'}  worker ${job.worker_id ?? '-'}`,
          `args ${JSON.stringify(job.args)}`,
        ];
        if (job.caused_by) lines.push(`caused by ${job.caused_by}`);
        if (job.progress !== null) {
          lines.push(
            `progress ${Math.round(job.progress * 10) / 10}%${job.progress_message ? ` ${job.progress_message}` : ''}${job.progress_at ? ` (at ${job.progress_at.toISOString()})` : ''}`,
          );
        }
        if (job.state === 'succeeded') lines.push(`result ${JSON.stringify(job.result) ?? 'null'}`);
        if (job.last_error) lines.push(`last error: ${job.last_error.message}`, job.last_error.stack ?? '');
        if (job.errors.length > 0) lines.push(`attempt history (${job.errors.length}):`);
        for (const entry of job.errors as { attempt?: number; at?: string; message?: string }[]) {
          lines.push(`  #${entry.attempt ?? '?'} ${entry.at ?? ''} ${entry.message ?? ''}`);
        }
        print(lines.join('\n').trimEnd(), job);
      }),
    );

  jobs
    .command('retry [ids...]')
    .description('put failed (or cancelled) jobs back to todo with a fresh attempt budget')
    .option('--failed', 'every failed job (narrow with --task, --error-contains, --since, --until)')
    .option('--task <name>', 'with --failed: only this task')
    .option('--error-contains <text>', 'with --failed: only jobs whose last error contains this (any case)')
    .option('--since <time>', 'with --failed: only jobs that failed at or after this ISO time')
    .option('--until <time>', 'with --failed: only jobs that failed at or before this ISO time')
    .option(
      '--dry-run',
      'with --failed: print how many of which task would be retried (and skipped for their queueing lock); change nothing',
    )
    .action(
      (
        ids: string[],
        flags: {
          failed?: boolean;
          task?: string;
          errorContains?: string;
          since?: string;
          until?: string;
          dryRun?: boolean;
        },
        command: Command,
      ) =>
        runCommand(command, async ({ app, print }) => {
          if (ids.length > 0 && flags.failed) throw new ValidationError('give job ids or --failed, not both');
          if (ids.length === 0 && !flags.failed)
            throw new ValidationError('give job ids, or --failed to retry every failed job');
          if (
            !flags.failed &&
            (flags.task || flags.since || flags.until || flags.errorContains || flags.dryRun)
          )
            throw new ValidationError(
              '--task, --error-contains, --since, --until and --dry-run go with --failed',
            );
          if (!flags.failed) {
            const result = await app.jobs.retry({ ids });
            print(formatAction('retried', result), result);
            return;
          }
          const selection = {
            failed: true as const,
            task: flags.task,
            errorContains: flags.errorContains,
            since: flags.since === undefined ? undefined : toDate(flags.since, '--since'),
            until: flags.until === undefined ? undefined : toDate(flags.until, '--until'),
          };
          if (flags.dryRun) {
            const preview = await app.jobs.previewRetry(selection);
            const total = preview.reduce((sum, entry) => sum + entry.count, 0);
            const skipped = preview.reduce((sum, entry) => sum + entry.skipped, 0);
            const retried = preview.filter((p) => p.count > 0);
            const lines = [
              `dry run, nothing changed: ${total} failed job(s) would be retried${retried.length ? `: ${retried.map((p) => `${p.task} ${p.count}`).join(', ')}` : ''}`,
            ];
            if (skipped > 0) {
              lines.push(
                `${skipped} would be skipped: only the newest job per queueing lock is retried, and none while one with that lock is waiting`,
              );
            }
            print(lines.join('\n'), { dryRun: true, total, skipped, byTask: preview });
            return;
          }
          const result = await app.jobs.retry(selection);
          print(formatAction('retried', result), result);
        }),
    );

  jobs
    .command('cancel <ids...>')
    .description(
      'cancel jobs: waiting ones (todo, scheduled) never run; running ones (doing, dirty) have their handler aborted and their transaction rolled back',
    )
    .action((ids: string[], _flags, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const result = await app.jobs.cancel(ids);
        print(formatAction('cancelled', result), result);
      }),
    );

  jobs
    .command('delete <ids...>')
    .description('delete jobs that are not running')
    .action((ids: string[], _flags, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const result = await app.jobs.delete(ids);
        print(formatAction('deleted', result), result);
      }),
    );

  jobs
    .command('stats')
    .description(
      'per task: jobs by state now, succeeded/retried/failed counts and durations so far, and due jobs no live worker knows',
    )
    .action((_flags, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const stats = await app.jobs.stats();
        print(formatStats(stats), stats);
      }),
    );
}
