import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Duration } from 'luxon';
import { ValidationError } from '../../src/errors.js';
import { defineSchedule } from '../../src/schedule/definition.js';
import { nextTicks, planDue, ticksBetween } from '../../src/schedule/ticks.js';

const iso = (dates: Date[]) => dates.map((d) => d.toISOString());
const at = (text: string) => new Date(text);

describe('schedule definition', () => {
  it('accepts 5- and 6-field cron, @aliases and durations', () => {
    assert.equal(defineSchedule('a', { cron: '0 3 * * *' }).kind, 'cron');
    assert.equal(defineSchedule('b', { cron: '*/10 * * * * *' }).kind, 'cron');
    assert.equal(defineSchedule('c', { cron: '@hourly', timezone: 'Europe/Paris' }).timezone, 'Europe/Paris');
    assert.equal(defineSchedule('d', { every: { seconds: 10 } }).everyMs, 10_000);
    assert.equal(defineSchedule('e', { every: Duration.fromObject({ minutes: 5 }) }).everyMs, 300_000);
  });

  it('names the schedule and the bad field for every invalid definition', () => {
    const cases: [string, unknown, RegExp][] = [
      ['bad-cron', { cron: '61 * * * *' }, /schedule "bad-cron": cron "61 \* \* \* \*" is invalid: .*59/],
      ['few-fields', { cron: '* * *' }, /schedule "few-fields": cron "\* \* \*" has 3 fields: expected 5/],
      ['not-string', { cron: 5 }, /schedule "not-string": cron must be a string/],
      [
        'zone',
        { cron: '0 3 * * *', timezone: 'Mars/Olympus' },
        /schedule "zone": timezone "Mars\/Olympus" is unknown/,
      ],
      ['fast', { every: { milliseconds: 500 } }, /schedule "fast": every PT0.5S is under 1 second/],
      ['unit', { every: { fortnights: 1 } }, /schedule "unit": every is invalid: .*fortnights/],
      [
        'both',
        { cron: '* * * * *', every: { seconds: 5 } },
        /schedule "both": give exactly one of "cron" or "every"/,
      ],
      ['neither', {}, /schedule "neither": give exactly one of "cron" or "every"/],
      [
        'window',
        { every: { seconds: 5 }, catchUp: { hours: -1 } },
        /schedule "window": catchUp must not be negative/,
      ],
    ];
    for (const [name, spec, message] of cases) {
      assert.throws(
        () => defineSchedule(name, spec as never),
        (error: unknown) => {
          assert.ok(error instanceof ValidationError, name);
          assert.match(error.message, message);
          return true;
        },
      );
    }
    assert.throws(
      () => defineSchedule('has space', { cron: '* * * * *' }),
      /schedule name "has space" is invalid/,
    );
  });
});

describe('ticks', () => {
  it('a tick exactly at the start of a period belongs to the previous period', () => {
    const minutely = defineSchedule('m', { cron: '* * * * *' });
    assert.deepEqual(iso(ticksBetween(minutely, at('2026-01-01T00:00:00Z'), at('2026-01-01T00:02:00Z'))), [
      '2026-01-01T00:01:00.000Z',
      '2026-01-01T00:02:00.000Z',
    ]);
    const every = defineSchedule('e', { every: { minutes: 1 } });
    assert.deepEqual(iso(ticksBetween(every, at('2026-01-01T00:00:00Z'), at('2026-01-01T00:02:00Z'))), [
      '2026-01-01T00:01:00.000Z',
      '2026-01-01T00:02:00.000Z',
    ]);
  });

  it('Europe/Paris daily 02:30: once on the spring-forward day (at 03:30), once on the fall-back day', () => {
    const daily = defineSchedule('paris', { cron: '30 2 * * *', timezone: 'Europe/Paris' });
    // 2026-03-29: clocks jump 02:00 -> 03:00 CEST; 02:30 does not exist, the job runs at 03:30 CEST.
    assert.deepEqual(iso(ticksBetween(daily, at('2026-03-28T00:00:00Z'), at('2026-03-31T00:00:00Z'))), [
      '2026-03-28T01:30:00.000Z',
      '2026-03-29T01:30:00.000Z',
      '2026-03-30T00:30:00.000Z',
    ]);
    // 2026-10-25: 03:00 CEST -> 02:00 CET, 02:30 happens twice; the job runs at the first one only.
    assert.deepEqual(iso(ticksBetween(daily, at('2026-10-24T00:00:00Z'), at('2026-10-27T00:00:00Z'))), [
      '2026-10-24T00:30:00.000Z',
      '2026-10-25T00:30:00.000Z',
      '2026-10-26T01:30:00.000Z',
    ]);
  });

  it('an hourly job stays hourly across both transitions (Paris and New York)', () => {
    for (const [zone, spring, fall] of [
      ['Europe/Paris', '2026-03-29T00:00:00Z', '2026-10-25T00:00:00Z'],
      ['America/New_York', '2026-03-08T04:00:00Z', '2026-11-01T04:00:00Z'],
    ] as const) {
      const hourly = defineSchedule(`hourly-${zone}`, { cron: '0 * * * *', timezone: zone });
      for (const start of [spring, fall]) {
        const ticks = ticksBetween(hourly, at(start), new Date(at(start).getTime() + 6 * 3600_000));
        assert.equal(ticks.length, 6, `${zone} ${start}`);
        for (let i = 1; i < ticks.length; i++) {
          assert.equal(ticks[i]!.getTime() - ticks[i - 1]!.getTime(), 3600_000, `${zone} ${start}`);
        }
      }
    }
  });

  it('America/New_York daily 02:30 runs once on both transition days', () => {
    const daily = defineSchedule('ny', { cron: '30 2 * * *', timezone: 'America/New_York' });
    assert.equal(ticksBetween(daily, at('2026-03-08T00:00:00Z'), at('2026-03-09T00:00:00Z')).length, 1);
    assert.equal(ticksBetween(daily, at('2026-11-01T00:00:00Z'), at('2026-11-02T00:00:00Z')).length, 1);
    const at130 = defineSchedule('ny-130', { cron: '30 1 * * *', timezone: 'America/New_York' });
    // 01:30 happens twice on 2026-11-01 (EDT then EST): one tick, the first.
    assert.deepEqual(iso(ticksBetween(at130, at('2026-11-01T00:00:00Z'), at('2026-11-02T00:00:00Z'))), [
      '2026-11-01T05:30:00.000Z',
    ]);
  });

  it('lists the next ticks', () => {
    const every = defineSchedule('e', { every: { seconds: 10 } });
    assert.deepEqual(iso(nextTicks(every, at('2026-01-01T00:00:05Z'), 2)), [
      '2026-01-01T00:00:10.000Z',
      '2026-01-01T00:00:20.000Z',
    ]);
  });
});

describe('catch-up plan after a 3-hour outage', () => {
  const since = at('2026-05-01T09:00:00Z');
  const now = at('2026-05-01T12:00:30Z');

  it('by default enqueues only the most recent missed tick and counts the rest', () => {
    const plan = planDue(defineSchedule('m', { every: { minutes: 1 } }), since, now);
    assert.deepEqual(iso(plan.enqueue), ['2026-05-01T12:00:00.000Z']);
    assert.equal(plan.skipped.count, 179);
    assert.equal(plan.skipped.first?.toISOString(), '2026-05-01T09:01:00.000Z');
    assert.equal(plan.skipped.last?.toISOString(), '2026-05-01T11:59:00.000Z');
  });

  it('with a window enqueues every missed tick inside it, in order', () => {
    const plan = planDue(defineSchedule('m', { every: { minutes: 1 }, catchUp: { hours: 1 } }), since, now);
    assert.equal(plan.enqueue.length, 60);
    assert.equal(plan.enqueue[0]?.toISOString(), '2026-05-01T11:01:00.000Z');
    assert.equal(plan.enqueue[59]?.toISOString(), '2026-05-01T12:00:00.000Z');
    assert.equal(plan.skipped.count, 120);
    const hourly = planDue(defineSchedule('h', { cron: '0 * * * *', catchUp: { hours: 24 } }), since, now);
    assert.deepEqual(iso(hourly.enqueue), [
      '2026-05-01T10:00:00.000Z',
      '2026-05-01T11:00:00.000Z',
      '2026-05-01T12:00:00.000Z',
    ]);
    assert.equal(hourly.skipped.count, 0);
  });

  it('has nothing to do when no tick passed', () => {
    const plan = planDue(
      defineSchedule('h', { cron: '0 * * * *' }),
      at('2026-05-01T12:00:00Z'),
      at('2026-05-01T12:59:59Z'),
    );
    assert.deepEqual(plan.enqueue, []);
    assert.equal(plan.skipped.count, 0);
  });
});
