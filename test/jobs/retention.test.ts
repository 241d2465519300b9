/**
 * History retention (pruneHistory): task_stats, schedule_ticks and audit_log rows past
 * their retention are deleted in bounded batches, younger ones kept, and a pruned tick is
 * never enqueued again.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Clock } from '../../src/clock.js';
import { ValidationError } from '../../src/errors.js';
import {
  DEFAULT_HISTORY_RETENTION,
  type HistoryRetention,
  pruneHistory,
  resolveHistoryRetention,
} from '../../src/jobs/maintenance.js';
import { createLogger } from '../../src/log.js';
import { defineSchedule } from '../../src/schedule/definition.js';
import { makeScheduler } from '../../src/schedule/scheduler.js';
import { isolatedApp, ROOT, type TestApp } from '../helpers.js';

const DAY = 86_400_000;
const NOW = new Date('2030-06-01T00:00:00Z');
const ago = (ms: number) => new Date(NOW.getTime() - ms);

let t: TestApp;
let q: string;

before(async () => {
  t = await isolatedApp('retention');
  q = `"${t.schema}"`;
});

after(async () => {
  await t.cleanup();
});

async function count(table: string, where = 'true', params: unknown[] = []): Promise<number> {
  const { rows } = await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.${table} WHERE ${where}`, params);
  return rows[0].n;
}

async function clear() {
  await t.pool.query(`TRUNCATE ${q}.task_stats, ${q}.schedule_ticks, ${q}.schedules, ${q}.audit_log`);
}

async function addTaskStats(task: string, minutes: Date[]) {
  await t.pool.query(
    `INSERT INTO ${q}.task_stats (task, minute, succeeded) SELECT $1, unnest($2::timestamptz[]), 1`,
    [task, minutes],
  );
}

async function addAudit(at: Date[]) {
  await t.pool.query(
    `INSERT INTO ${q}.audit_log (at, actor, host, action, subject)
     SELECT unnest($1::timestamptz[]), 'test', 'host', 'jobs.retry', 'job:1'`,
    [at],
  );
}

describe('history retention options', () => {
  it('defaults to 30 days of task_stats, 7 of schedule ticks and 90 of audit_log, 10 000 rows a pass', () => {
    assert.deepEqual(resolveHistoryRetention(), DEFAULT_HISTORY_RETENTION);
    assert.deepEqual(resolveHistoryRetention({ auditLog: null, taskStats: { days: 14 }, batchSize: 500 }), {
      ...DEFAULT_HISTORY_RETENTION,
      taskStatsMs: 14 * DAY,
      auditLogMs: null,
      batchSize: 500,
    });
  });

  it('refuses what is not a retention, in one line', () => {
    const cases: [unknown, RegExp][] = [
      [{ taskStats: 30 }, /^historyRetention\.taskStats \(30 ms\) is invalid: expected at least a day/],
      [{ auditLog: { days: -1 } }, /^historyRetention\.auditLog .* is invalid/],
      [{ scheduleTicks: 'a week' }, /^historyRetention\.scheduleTicks "a week" is invalid/],
      [{ batchSize: 0 }, /^historyRetention\.batchSize 0 is invalid: expected an integer from 1/],
      [{ taskstats: { days: 1 } }, /^historyRetention\.taskstats is not an option: expected taskStats, /],
      [[], /^historyRetention \[\] is invalid/],
    ];
    for (const [options, message] of cases) {
      assert.throws(
        () => resolveHistoryRetention(options as never),
        (error: Error) =>
          error instanceof ValidationError && message.test(error.message) && !error.message.includes('\n'),
        JSON.stringify(options),
      );
    }
  });
});

describe('pruneHistory', () => {
  it('deletes task_stats and audit_log rows past their retention and keeps younger ones', async () => {
    await clear();
    await addTaskStats('send', [ago(31 * DAY), ago(30 * DAY + 60_000), ago(29 * DAY), ago(60_000)]);
    await addAudit([ago(200 * DAY), ago(91 * DAY), ago(89 * DAY), ago(DAY)]);
    const result = await pruneHistory(t.pool, t.schema, NOW, DEFAULT_HISTORY_RETENTION);
    assert.deepEqual(result, { taskStats: 2, scheduleTicks: 0, auditLog: 2, more: false });
    assert.equal(await count('task_stats', 'minute < $1', [ago(30 * DAY)]), 0);
    assert.equal(await count('task_stats'), 2);
    assert.equal(await count('audit_log', 'at < $1', [ago(90 * DAY)]), 0);
    assert.equal(await count('audit_log'), 2);
  });

  it('keeps a table forever when its retention is null', async () => {
    await clear();
    await addAudit([ago(1000 * DAY)]);
    const result = await pruneHistory(t.pool, t.schema, NOW, resolveHistoryRetention({ auditLog: null }));
    assert.equal(result.auditLog, 'kept');
    assert.equal(await count('audit_log'), 1);
  });

  it('works off a large backlog over several bounded passes', async () => {
    await clear();
    const old = Array.from({ length: 2_500 }, (_, i) => ago(40 * DAY + i * 60_000));
    await addTaskStats('a', old);
    await addTaskStats('b', [ago(DAY)]);
    const retention: HistoryRetention = { ...DEFAULT_HISTORY_RETENTION, batchSize: 1_000 };
    const passes: (number | string)[] = [];
    for (let pass = 0; pass < 10; pass++) {
      const result = await pruneHistory(t.pool, t.schema, NOW, retention);
      passes.push(result.taskStats);
      if (!result.more) break;
    }
    assert.deepEqual(passes, [1_000, 1_000, 500]);
    assert.equal(await count('task_stats'), 1);
  });

  it('never deletes the ticks of a schedule with no last tick', async () => {
    await clear();
    await t.pool.query(
      `INSERT INTO ${q}.schedules (name, kind, expression, timezone, task, first_seen_at, last_seen_at)
       VALUES ('odd', 'every', '3600000', 'UTC', 'record', $1, $1)`,
      [ago(60 * DAY)],
    );
    await t.pool.query(
      `INSERT INTO ${q}.schedule_ticks (schedule, tick, enqueued_at) SELECT 'odd', t, t FROM unnest($1::timestamptz[]) t`,
      [[ago(50 * DAY), ago(40 * DAY)]],
    );
    const result = await pruneHistory(t.pool, t.schema, NOW, DEFAULT_HISTORY_RETENTION);
    assert.equal(result.scheduleTicks, 0);
    assert.equal(await count('schedule_ticks'), 2);
  });
});

describe('schedule tick dedupe after pruning', () => {
  it('prunes old ticks but the newest, and a scheduler pass never enqueues a pruned tick again', async () => {
    await clear();
    await t.pool.query(`CREATE TABLE IF NOT EXISTS ${q}.fired (tick timestamptz NOT NULL)`);
    let now = ago(10 * DAY);
    const clock: Clock = { now: () => now };
    const scheduler = makeScheduler({
      pool: t.pool,
      q,
      log: createLogger({ level: 'silent' }),
      clock,
      schedules: [
        {
          schedule: defineSchedule('hourly', { every: { hours: 1 }, catchUp: { days: 30 } }),
          task: 'record',
          async enqueue(client, tick) {
            await client.query(`INSERT INTO ${q}.fired (tick) VALUES ($1)`, [tick]);
            return null;
          },
        },
      ],
    });
    await scheduler.runOnce(); // first sight: ticks start here
    now = NOW;
    assert.equal((await scheduler.runOnce()).length, 240); // ten days of hourly ticks
    const old = await count('schedule_ticks', 'tick < $1', [ago(7 * DAY)]);
    assert.equal(old, 71);

    const result = await pruneHistory(t.pool, t.schema, NOW, DEFAULT_HISTORY_RETENTION);
    assert.equal(result.scheduleTicks, old);
    assert.equal(await count('schedule_ticks'), 240 - old);

    // Again at the same time, then from a scheduler whose clock lags into the pruned days.
    assert.deepEqual(await scheduler.runOnce(), []);
    now = ago(9 * DAY);
    assert.deepEqual(await scheduler.runOnce(), []);
    // Later, with a one-day retention: all but the last day's ticks go, and none comes back.
    now = new Date(NOW.getTime() + 3 * DAY);
    const later = await scheduler.runOnce();
    assert.equal(later.length, 3 * 24);
    await pruneHistory(t.pool, t.schema, now, { ...DEFAULT_HISTORY_RETENTION, scheduleTicksMs: DAY });
    assert.equal(await count('schedule_ticks'), 25); // the last day's, both ends included
    assert.deepEqual(await scheduler.runOnce(), []);
    // Long after, with no tick since: the newest stays (`schedules list` shows its job).
    await pruneHistory(t.pool, t.schema, new Date(now.getTime() + 30 * DAY), DEFAULT_HISTORY_RETENTION);
    const kept = await t.pool.query(`SELECT tick FROM ${q}.schedule_ticks`);
    assert.deepEqual(
      kept.rows.map((row) => row.tick.toISOString()),
      [now.toISOString()],
    );

    const { rows } = await t.pool.query(
      `SELECT count(*)::int AS n, count(DISTINCT tick)::int AS ticks FROM ${q}.fired`,
    );
    assert.deepEqual(rows[0], { n: 240 + 3 * 24, ticks: 240 + 3 * 24 }, 'each tick enqueued once');
  });
});

describe('under the least-privilege worker role (ops/sql/roles.sql)', () => {
  const prefix = `t_ret_${randomBytes(3).toString('hex')}`;

  after(async () => {
    await t.pool.query(`DROP SCHEMA IF EXISTS ${q} CASCADE`);
    for (const name of ['appender', 'worker', 'dashboard']) {
      await t.pool.query(`DROP ROLE IF EXISTS ${prefix}_${name}`);
    }
  });

  it('prunes task_stats and schedule_ticks, and reports audit_log as denied', async () => {
    await clear();
    await addTaskStats('send', [ago(31 * DAY)]);
    await addAudit([ago(91 * DAY)]);
    const sql = await fs.readFile(path.join(ROOT, 'ops', 'sql', 'roles.sql'), 'utf8');
    const client = await t.pool.connect();
    try {
      await client.query(`SET search_path TO ${q}; SET outbatch.role_prefix = '${prefix}'`);
      await client.query(sql);
      await client.query(`RESET search_path; SET ROLE ${prefix}_worker`);
      const result = await pruneHistory(client, t.schema, NOW, DEFAULT_HISTORY_RETENTION);
      assert.deepEqual(result, { taskStats: 1, scheduleTicks: 0, auditLog: 'denied', more: false });
    } finally {
      await client.query('RESET ROLE; RESET outbatch.role_prefix').catch(() => {});
      client.release();
    }
    assert.equal(await count('audit_log'), 1);
  });
});
