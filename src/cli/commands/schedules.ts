/** `outbatch schedules`: list the stored schedules with their next ticks; check an app module's schedules. */
import type { Command } from 'commander';
import { DateTime, Duration } from 'luxon';
import { quoteSchema } from '../../db/identifiers.js';
import { defineSchedule, type Schedule } from '../../schedule/definition.js';
import { listSchedules } from '../../schedule/store.js';
import { nextTicks } from '../../schedule/ticks.js';
import { runCommand } from '../context.js';
import { table } from '../format.js';
import { loadAppModule } from './worker.js';

/** A stored schedule row back into a definition, to compute its next ticks. */
function fromRow(row: {
  name: string;
  kind: 'cron' | 'every';
  expression: string;
  timezone: string;
}): Schedule {
  return row.kind === 'every'
    ? defineSchedule(row.name, { every: Duration.fromISO(row.expression), timezone: row.timezone })
    : defineSchedule(row.name, { cron: row.expression, timezone: row.timezone });
}

function upcoming(schedule: Schedule, now: Date) {
  return nextTicks(schedule, now, 3).map((tick) => ({
    local: DateTime.fromJSDate(tick, { zone: schedule.timezone }).toISO({ suppressMilliseconds: true }),
    utc: tick.toISOString(),
  }));
}

export function registerSchedules(program: Command): void {
  const schedules = program.command('schedules').description('cron and interval schedules');
  schedules
    .command('list')
    .description('each schedule: expression, zone, next three ticks, last tick and its job outcome')
    .action((_options, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const db = await app.database();
        const rows = await listSchedules(db.pool, quoteSchema(app.schema));
        const now = app.clock.now();
        const list = rows.map((row) => ({
          name: row.name,
          kind: row.kind,
          expression: row.expression,
          timezone: row.timezone,
          task: row.task,
          next: upcoming(fromRow(row), now),
          lastTick: row.last_tick,
          lastOutcome: row.last_outcome,
          lastLateMs: row.last_late_ms === null ? null : Number(row.last_late_ms),
          lastSeenAt: row.last_seen_at,
        }));
        const human =
          list.length === 0
            ? 'no schedules yet (they appear once a worker with them in its code has started)'
            : table(
                [
                  'schedule',
                  'expression',
                  'zone',
                  'next ticks (zone / UTC)',
                  'last tick',
                  'outcome',
                  'seen by a worker',
                ],
                list.map((s) => [
                  s.name,
                  s.expression,
                  s.timezone,
                  s.next.map((t) => `${t.local} / ${t.utc}`).join(', '),
                  s.lastTick?.toISOString() ?? 'never',
                  s.lastOutcome ?? '-',
                  s.lastSeenAt.toISOString(),
                ]),
              );
        print(human, list);
      }),
    );
  schedules
    .command('check')
    .description('validate every schedule of an app module (for CI); exits non-zero on the first bad one')
    .requiredOption('--app <module>', 'module exporting the app')
    .action((flags: { app: string }, command: Command) =>
      runCommand(command, async ({ print }) => {
        // Importing the module defines its schedules; a bad one throws there, naming itself.
        const app = await loadAppModule(flags.app);
        const now = new Date();
        const list = app.definitions().schedules.map((schedule) => ({
          name: schedule.name,
          expression: schedule.expression,
          timezone: schedule.timezone,
          next: upcoming(schedule, now),
        }));
        print(
          list.length === 0
            ? `${flags.app}: no schedules`
            : `${list.map((s) => `ok  ${s.name}  ${s.expression} (${s.timezone})  next: ${s.next.map((t) => t.local).join(', ')}`).join('\n')}\n${list.length} schedule(s) valid`,
          { ok: true, schedules: list },
        );
      }),
    );
}
