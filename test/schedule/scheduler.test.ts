import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import type { Clock } from '../../src/clock.js';
import { createLogger } from '../../src/log.js';
import { defineSchedule, type ScheduleSpec } from '../../src/schedule/definition.js';
import { makeScheduler, type ScheduledTask } from '../../src/schedule/scheduler.js';
import { ticksBetween } from '../../src/schedule/ticks.js';
import { captureLog, isolatedApp, type TestApp } from '../helpers.js';

let t: TestApp;
let q: string;
const pools: pg.Pool[] = [];

before(async () => {
  t = await isolatedApp('scheduler');
  q = `"${t.schema}"`;
  await t.pool.query(
    `CREATE TABLE ${q}.fired (schedule text, tick timestamptz, id bigint GENERATED ALWAYS AS IDENTITY)`,
  );
});
after(async () => {
  for (const pool of pools) await pool.end();
  await t.cleanup();
});

/** A scheduler on its own pool whose "job" is a row in `fired`, written in the tick's transaction. */
function scheduler(
  clock: Clock,
  specs: Record<string, ScheduleSpec>,
  log = createLogger({ level: 'silent' }),
) {
  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 });
  pools.push(pool);
  const schedules: ScheduledTask[] = Object.entries(specs).map(([name, spec]) => ({
    schedule: defineSchedule(name, spec),
    task: 'record',
    async enqueue(client, tick) {
      const { rows } = await client.query(
        `INSERT INTO ${q}.fired (schedule, tick) VALUES ($1, $2) RETURNING id::text`,
        [name, tick],
      );
      return rows[0]!.id;
    },
  }));
  return makeScheduler({ pool, q, log, clock, schedules });
}

async function fired(schedule: string): Promise<string[]> {
  const { rows } = await t.pool.query(`SELECT tick FROM ${q}.fired WHERE schedule = $1 ORDER BY tick, id`, [
    schedule,
  ]);
  return rows.map((row) => row.tick.toISOString());
}

describe('scheduler', () => {
  it('three schedulers over a simulated 48 hours enqueue every tick exactly once', async () => {
    let now = new Date('2026-10-24T00:00:00Z'); // spans the Europe/Paris fall-back night
    const clock: Clock = { now: () => now };
    const specs: Record<string, ScheduleSpec> = {
      'sim-minutely': { every: { minutes: 1 }, catchUp: { hours: 1 } },
      'sim-cron': { cron: '*/7 2-3 * * *', timezone: 'Europe/Paris', catchUp: { hours: 1 } },
    };
    const schedulers = [scheduler(clock, specs), scheduler(clock, specs), scheduler(clock, specs)];
    const start = now;
    await Promise.all(schedulers.map((s) => s.runOnce())); // first sight: records the schedules
    const end = new Date(start.getTime() + 48 * 3600_000);
    let seed = 42;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    while (now < end) {
      now = new Date(Math.min(end.getTime(), now.getTime() + Math.floor(20_000 + random() * 400_000)));
      await Promise.all(schedulers.map((s) => s.runOnce()));
    }
    const minutely = await fired('sim-minutely');
    assert.equal(minutely.length, 48 * 60);
    assert.equal(new Set(minutely).size, minutely.length, 'no tick twice');
    const expectedCron = ticksBetween(defineSchedule('sim-cron', specs['sim-cron']!), start, end).map((d) =>
      d.toISOString(),
    );
    assert.deepEqual(await fired('sim-cron'), expectedCron);
    // 18 ticks a day in 02:00-03:59 Paris; the repeated 02:xx hour of the fall-back night fires once,
    // and 02:00 CEST on the first day is the (exclusive) start of the period.
    assert.equal(expectedCron.length, 17 + 18);
  });

  it('after a 3-hour outage enqueues only the latest missed tick by default, and logs the skipped ones once', async () => {
    let now = new Date('2026-05-01T09:00:00Z');
    const clock: Clock = { now: () => now };
    const { log, lines } = captureLog();
    const s = scheduler(clock, { 'outage-default': { every: { minutes: 1 } } }, log);
    await s.runOnce();
    now = new Date('2026-05-01T12:00:30Z');
    await Promise.all([
      s.runOnce(),
      scheduler(clock, { 'outage-default': { every: { minutes: 1 } } }).runOnce(),
    ]);
    assert.deepEqual(await fired('outage-default'), ['2026-05-01T12:00:00.000Z']);
    const skippedLines = lines.filter((line) =>
      line.includes('skipped 179 missed tick(s) from 2026-05-01T09:01:00.000Z'),
    );
    assert.equal(skippedLines.length, 1);
  });

  it('after a 3-hour outage enqueues every missed tick inside the catch-up window, in order', async () => {
    let now = new Date('2026-05-01T09:00:00Z');
    const clock: Clock = { now: () => now };
    const spec = { every: { minutes: 1 }, catchUp: { minutes: 30 } };
    const s = scheduler(clock, { 'outage-window': spec });
    await s.runOnce();
    now = new Date('2026-05-01T12:00:30Z');
    await s.runOnce();
    const ticks = await fired('outage-window');
    assert.equal(ticks.length, 30);
    assert.equal(ticks[0], '2026-05-01T11:31:00.000Z');
    assert.equal(ticks[29], '2026-05-01T12:00:00.000Z');
  });

  it('warns when a tick is enqueued later than lateAfter', async () => {
    let now = new Date('2026-05-02T00:00:00Z');
    const clock: Clock = { now: () => now };
    const { log, lines } = captureLog();
    const s = scheduler(clock, { late: { every: { minutes: 10 }, lateAfter: { seconds: 30 } } }, log);
    await s.runOnce();
    now = new Date('2026-05-02T00:12:00Z');
    await s.runOnce();
    assert.ok(lines.some((line) => line.includes('tick 2026-05-02T00:10:00.000Z enqueued 120 s late')));
    const { rows } = await t.pool.query(`SELECT late_ms FROM ${q}.schedule_ticks WHERE schedule = 'late'`);
    assert.deepEqual(
      rows.map((row) => Number(row.late_ms)),
      [120_000],
    );
  });

  it('a schedule whose enqueue throws is logged and retried, and does not stop the schedules after it', async () => {
    let now = new Date('2026-07-01T00:00:00Z');
    const clock: Clock = { now: () => now };
    const { log, lines } = captureLog();
    const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 });
    pools.push(pool);
    let refusals = 2;
    const failing: ScheduledTask = {
      schedule: defineSchedule('iso-failing', { every: { minutes: 1 } }),
      task: 'record',
      async enqueue(client, tick) {
        if (refusals > 0) {
          refusals -= 1;
          throw new Error('defer refused');
        }
        const { rows } = await client.query(
          `INSERT INTO ${q}.fired (schedule, tick) VALUES ('iso-failing', $1) RETURNING id::text`,
          [tick],
        );
        return rows[0]!.id;
      },
    };
    const healthy: ScheduledTask = {
      schedule: defineSchedule('iso-healthy', { every: { minutes: 1 } }),
      task: 'record',
      async enqueue(client, tick) {
        const { rows } = await client.query(
          `INSERT INTO ${q}.fired (schedule, tick) VALUES ('iso-healthy', $1) RETURNING id::text`,
          [tick],
        );
        return rows[0]!.id;
      },
    };
    // The failing schedule comes first: before the fix its error ended the whole pass.
    const s = makeScheduler({ pool, q, log, clock, schedules: [failing, healthy] });
    await s.runOnce(); // first sight: records both schedules
    now = new Date('2026-07-01T00:01:10Z');
    assert.deepEqual(await s.runOnce(), [
      { schedule: 'iso-healthy', tick: new Date('2026-07-01T00:01:00Z') },
    ]);
    now = new Date('2026-07-01T00:02:10Z');
    await s.runOnce();
    assert.deepEqual(await fired('iso-healthy'), ['2026-07-01T00:01:00.000Z', '2026-07-01T00:02:00.000Z']);
    assert.deepEqual(await fired('iso-failing'), []);
    const records = lines
      .map((line) => JSON.parse(line))
      .filter((record) => record.schedule === 'iso-failing');
    const failures = records.filter((record) => record.level === 50);
    assert.equal(failures.length, 2, 'one line per failed pass');
    assert.match(failures[0].msg, /^schedule "iso-failing": .*defer refused$/);
    assert.equal(records.length, 2, 'a rolled-back pass reports no skipped ticks');

    // The failed passes claimed nothing: once enqueue works, the due tick is enqueued.
    now = new Date('2026-07-01T00:02:20Z');
    await s.runOnce();
    assert.deepEqual(await fired('iso-failing'), ['2026-07-01T00:02:00.000Z']);
  });

  it('a new schedule does not enqueue ticks from before it first appeared', async () => {
    const now = new Date('2026-06-01T12:30:00Z');
    const s = scheduler({ now: () => now }, { fresh: { cron: '0 * * * *' } });
    assert.deepEqual(await s.runOnce(), []);
  });
});
