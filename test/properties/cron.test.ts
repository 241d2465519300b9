import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { DateTime } from 'luxon';
import { defineSchedule } from '../../src/schedule/definition.js';
import { ticksBetween } from '../../src/schedule/ticks.js';

/**
 * The reference: walk every real minute and ask whether the wall time there matches,
 * applying the documented DST rule — a repeated wall time fires once unless the
 * expression runs every hour; a skipped wall time fires at the same minute one gap later.
 */
interface Fields {
  minutes: Set<number>;
  hours: Set<number>;
  days: Set<number> | null;
  months: Set<number> | null;
  weekdays: Set<number> | null;
}

function matches(f: Fields, local: DateTime): boolean {
  return (
    f.minutes.has(local.minute) &&
    f.hours.has(local.hour) &&
    (f.days === null || f.days.has(local.day)) &&
    (f.months === null || f.months.has(local.month)) &&
    (f.weekdays === null || f.weekdays.has(local.weekday % 7))
  );
}

function reference(f: Fields, zone: string, from: number, to: number): number[] {
  const ticks = new Set<number>();
  const everyHour = f.hours.size === 24;
  for (let t = from + 60_000; t <= to; t += 60_000) {
    const local = DateTime.fromMillis(t, { zone });
    const before = DateTime.fromMillis(t - 60_000, { zone });
    const gap = local.offset - before.offset; // minutes the clock jumped forward at t
    if (gap > 0) {
      // Wall times in [before + 1 min, local) never happened: they fire `gap` later.
      for (let missing = 1; missing <= gap; missing++) {
        // The skipped wall time, as plain fields (computed in UTC, which has no gaps).
        const skipped = DateTime.fromObject(
          { ...before.toObject(), second: 0, millisecond: 0 },
          { zone: 'UTC' },
        ).plus({
          minutes: missing,
        });
        const asLocal = DateTime.fromObject(
          {
            year: skipped.year,
            month: skipped.month,
            day: skipped.day,
            hour: skipped.hour,
            minute: skipped.minute,
          },
          { zone },
        );
        if (matches(f, skipped) && asLocal.toMillis() > from && asLocal.toMillis() <= to)
          ticks.add(asLocal.toMillis());
      }
    }
    if (!matches(f, local)) continue;
    const back = DateTime.fromMillis(t - 3 * 3600_000, { zone }).offset - local.offset;
    const repeated =
      back > 0 &&
      DateTime.fromMillis(t - back * 60_000, { zone }).toFormat('yyyy-MM-dd HH:mm') ===
        local.toFormat('yyyy-MM-dd HH:mm');
    if (repeated && !everyHour) continue;
    ticks.add(t);
  }
  return [...ticks].sort((a, b) => a - b);
}

const ZONES = [
  'UTC',
  'Europe/Paris',
  'America/New_York',
  'Australia/Sydney',
  'Asia/Kolkata',
  'America/Sao_Paulo',
];

function field(values: number[], all: number): string {
  return values.length === all ? '*' : values.join(',');
}

const arbitraryCron = fc.record({
  minutes: fc.oneof(
    fc.constant([...Array(60).keys()]),
    fc.integer({ min: 2, max: 30 }).map((step) => [...Array(60).keys()].filter((m) => m % step === 0)),
    fc.uniqueArray(fc.integer({ min: 0, max: 59 }), { minLength: 1, maxLength: 4 }),
  ),
  hours: fc.oneof(
    fc.constant([...Array(24).keys()]),
    fc.uniqueArray(fc.integer({ min: 0, max: 23 }), { minLength: 1, maxLength: 4 }),
    fc.constant([1, 2, 3]),
  ),
  dayKind: fc.constantFrom('any', 'days', 'weekdays'),
  days: fc.uniqueArray(fc.integer({ min: 1, max: 28 }), { minLength: 1, maxLength: 5 }),
  weekdays: fc.uniqueArray(fc.integer({ min: 0, max: 6 }), { minLength: 1, maxLength: 3 }),
  zone: fc.constantFrom(...ZONES),
  // Around this year's transitions, and anywhere.
  start: fc.oneof(
    fc.constantFrom(
      Date.UTC(2026, 2, 27),
      Date.UTC(2026, 2, 6),
      Date.UTC(2026, 9, 23),
      Date.UTC(2026, 9, 30),
      Date.UTC(2026, 3, 3),
      Date.UTC(2026, 9, 2),
    ),
    fc.integer({ min: Date.UTC(2026, 0, 1), max: Date.UTC(2026, 11, 28) }),
  ),
  // How often a scheduler cut the period into windows (minutes), and where the first cut fell.
  step: fc.integer({ min: 20, max: 240 }),
  offset: fc.integer({ min: 1, max: 240 }),
});

describe('cron ticks (property)', () => {
  it('match a brute-force minute-by-minute reference over random expressions and zones', () => {
    fc.assert(
      fc.property(arbitraryCron, (c) => {
        const sorted = (values: readonly number[]) => [...values].sort((a, b) => a - b);
        const minutes = sorted(c.minutes);
        const hours = sorted(c.hours);
        const days = c.dayKind === 'days' ? sorted(c.days) : null;
        const weekdays = c.dayKind === 'weekdays' ? sorted(c.weekdays) : null;
        const expression = `${field(minutes, 60)} ${field(hours, 24)} ${days ? days.join(',') : '*'} * ${weekdays ? weekdays.join(',') : '*'}`;
        const schedule = defineSchedule('property', { cron: expression, timezone: c.zone });
        const from = Math.floor(c.start / 60_000) * 60_000;
        const to = from + 3 * 86_400_000;
        const fields: Fields = {
          minutes: new Set(minutes),
          hours: new Set(hours),
          days: days ? new Set(days) : null,
          months: null,
          weekdays: weekdays ? new Set(weekdays) : null,
        };
        const want = reference(fields, c.zone, from, to);
        // However schedulers cut the period, the ticks are the same: every process agrees.
        const bounds = [from];
        for (let t = from + c.offset * 60_000; t < to; t += c.step * 60_000) bounds.push(t);
        bounds.push(to);
        const got = bounds
          .slice(1)
          .flatMap((end, i) => ticksBetween(schedule, new Date(bounds[i]!), new Date(end)))
          .map((d) => d.getTime());
        assert.deepEqual(
          got.map((t) => new Date(t).toISOString()),
          want.map((t) => new Date(t).toISOString()),
          `${expression} in ${c.zone} from ${new Date(from).toISOString()}`,
        );
      }),
      { numRuns: 80 },
    );
  });
});
