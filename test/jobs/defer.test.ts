// @smoke
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { DateTime, Duration } from 'luxon';
import pg from 'pg';
import { AlreadyEnqueued, ValidationError } from '../../src/errors.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('jobs_defer');
});
after(async () => t.cleanup());

const jobCount = async () =>
  Number((await t.pool.query(`SELECT count(*) FROM "${t.schema}".jobs`)).rows[0].count);
const row = async (id: string) =>
  (await t.pool.query(`SELECT * FROM "${t.schema}".jobs WHERE id = $1`, [id])).rows[0] as Record<
    string,
    unknown
  >;

/** Defers the same job through TypeScript and through SQL, to compare the rows. */
async function viaSql(args: Record<string, unknown>): Promise<{ id: string; enqueued: boolean }> {
  const names = Object.keys(args);
  const params = names.map((name, i) => `${name} => $${i + 1}`).join(', ');
  const { rows } = await t.pool.query(
    `SELECT id::text, enqueued FROM "${t.schema}".defer_job(${params})`,
    Object.values(args),
  );
  return rows[0];
}

describe('defer', () => {
  it('stores task, args, queue, priority, lock and run_at the same way from TypeScript and SQL', async () => {
    const send = t.app.task(
      'send-same',
      { queue: 'mail', priority: 3, retry: { attempts: 7 } },
      async () => {},
    );
    const runAt = new Date('2031-02-03T04:05:06.000Z');
    const fromTs = await send.defer({ to: 'a' }, { runAt, lock: 'user:1' });
    // The SQL caller does not import the handler: queue, priority and attempts come from
    // the tasks table once a worker registered the task; here we pass them explicitly.
    const fromSql = await viaSql({
      task: 'send-same',
      args: JSON.stringify({ to: 'a' }),
      queue: 'mail',
      priority: 3,
      max_attempts: 7,
      run_at: runAt,
      lock: 'user:1',
    });
    assert.ok(fromTs.enqueued && fromSql.enqueued);
    const a = await row(fromTs.id);
    const b = await row(fromSql.id);
    for (const column of [
      'task',
      'args',
      'queue',
      'priority',
      'max_attempts',
      'run_at',
      'lock',
      'status',
      'attempts',
    ]) {
      assert.deepEqual(a[column], b[column], column);
    }
    assert.equal(a.queue, 'mail');
    assert.equal(a.priority, 3);
    assert.deepEqual(a.run_at, runAt);
  });

  it('deferring by name takes the defaults a worker registered for the task', async () => {
    await t.pool.query(
      `INSERT INTO "${t.schema}".tasks (name, queue, priority, max_attempts, on_stall) VALUES ('registered', 'q9', 4, 2, 'fail')`,
    );
    const byName = await t.app.defer('registered', { x: 1 });
    const bySql = await viaSql({ task: 'registered', args: '{"x":1}' });
    assert.ok(byName.enqueued && bySql.enqueued);
    for (const id of [byName.id, bySql.id]) {
      const r = await row(id);
      assert.deepEqual([r.queue, r.priority, r.max_attempts], ['q9', 4, 2]);
    }
  });

  it('queueing lock: a second defer is AlreadyEnqueued, or returns the waiting job with ignore — in TS and SQL', async () => {
    const task = t.app.task('dedupe', {}, async () => {});
    const first = await task.defer({}, { queueingLock: 'report:7' });
    assert.ok(first.enqueued);
    await assert.rejects(task.defer({}, { queueingLock: 'report:7' }), (error: unknown) => {
      assert.ok(error instanceof AlreadyEnqueued);
      assert.equal(error.existingId, first.id);
      assert.equal(error.queueingLock, 'report:7');
      return true;
    });
    assert.deepEqual(await task.defer({}, { queueingLock: 'report:7', onConflict: 'ignore' }), {
      enqueued: false,
      existingId: first.id,
    });
    await assert.rejects(
      viaSql({ task: 'dedupe', queueing_lock: 'report:7' }),
      /already enqueued \(job \d+\)/,
    );
    assert.deepEqual(await viaSql({ task: 'dedupe', queueing_lock: 'report:7', on_conflict: 'ignore' }), {
      id: first.id,
      enqueued: false,
    });
    // Once the waiting job is running, the key is free again.
    await t.pool.query(`UPDATE "${t.schema}".jobs SET status = 'doing' WHERE id = $1`, [first.id]);
    const second = await task.defer({}, { queueingLock: 'report:7' });
    assert.ok(second.enqueued);
    const dupes = await t.pool.query(
      `SELECT count(*)::int AS n FROM "${t.schema}".jobs WHERE queueing_lock = 'report:7'`,
    );
    assert.equal(dupes.rows[0].n, 2);
  });

  it('deferMany is all or none, in input order, and dedupes queueing locks inside the batch', async () => {
    const task = t.app.task('many', {}, async () => {});
    const results = await task.deferMany([
      { args: { n: 1 } },
      { args: { n: 2 }, queueingLock: 'm' },
      { args: { n: 3 }, queueingLock: 'm', onConflict: 'ignore' },
      { args: { n: 4 }, priority: 9 },
    ]);
    assert.equal(results.length, 4);
    assert.ok(results[0]!.enqueued && results[1]!.enqueued && results[3]!.enqueued);
    assert.deepEqual(results[2], { enqueued: false, existingId: (results[1] as { id: string }).id });
    assert.deepEqual((await row((results[3] as { id: string }).id)).args, { n: 4 });
    const before = await jobCount();
    await assert.rejects(
      task.deferMany([{ args: { n: 5 } }, { args: { n: 6 }, queueingLock: 'm' }]),
      AlreadyEnqueued,
    );
    assert.equal(await jobCount(), before, 'the batch rolled back as a whole');
  });

  it('deferMany without queueing locks (one set-based insert) keeps input order and the same defaults as defer', async () => {
    const task = t.app.task('bulk', { queue: 'bulkq', priority: 2, retry: { attempts: 3 } }, async () => {});
    const results = await task.deferMany(
      Array.from({ length: 50 }, (_, n) => ({ args: { n }, ...(n === 7 ? { priority: 9, lock: 'L' } : {}) })),
    );
    const ids = results.map((r) => (r.enqueued ? r.id : 'x'));
    const { rows } = await t.pool.query(
      `SELECT id::text, args, queue, priority, max_attempts, lock FROM "${t.schema}".jobs WHERE id = ANY ($1::bigint[])`,
      [ids],
    );
    const byId = new Map(rows.map((r) => [r.id, r]));
    assert.deepEqual(
      ids.map((id) => byId.get(id)?.args),
      ids.map((_, n) => ({ n })),
    );
    assert.deepEqual(
      [byId.get(ids[0]!)?.queue, byId.get(ids[0]!)?.priority, byId.get(ids[0]!)?.max_attempts],
      ['bulkq', 2, 3],
    );
    assert.deepEqual([byId.get(ids[7]!)?.priority, byId.get(ids[7]!)?.lock], [9, 'L']);
    const single = await task.defer({ n: 'single' });
    assert.ok(single.enqueued);
    const one = (
      await t.pool.query(`SELECT queue, priority, max_attempts FROM "${t.schema}".jobs WHERE id = $1`, [
        single.id,
      ])
    ).rows[0];
    assert.deepEqual(one, { queue: 'bulkq', priority: 2, max_attempts: 3 });
  });

  it('joins the caller transaction: a rolled-back defer leaves no job, a committed one does', async () => {
    const task = t.app.task('in-tx', {}, async () => {});
    const client = new pg.Client({ connectionString: databaseUrl() });
    await client.connect();
    try {
      await client.query('BEGIN');
      const rolledBack = await task.defer({ n: 1 }, { client });
      await t.app.defer('in-tx', { n: 2 }, { client });
      await client.query('ROLLBACK');
      assert.ok(rolledBack.enqueued);
      assert.equal(await row(rolledBack.id), undefined);
      await client.query('BEGIN');
      const committed = await task.defer({ n: 3 }, { client });
      assert.ok(committed.enqueued);
      assert.equal(await row(committed.id), undefined, 'not visible before commit');
      await client.query('COMMIT');
      assert.deepEqual((await row(committed.id)).args, { n: 3 });
    } finally {
      await client.end();
    }
  });

  it('accepts runAt as Date, luxon DateTime or ISO string, and delay as a Duration or an object', async () => {
    const task = t.app.task('times', {}, async () => {});
    const at = DateTime.fromISO('2032-06-01T10:00:00+02:00');
    const a = await task.defer({}, { runAt: at });
    const b = await task.defer({}, { runAt: '2032-06-01T08:00:00Z' });
    assert.ok(a.enqueued && b.enqueued);
    assert.deepEqual((await row(a.id)).run_at, (await row(b.id)).run_at);
    const c = await task.defer({}, { delay: { minutes: 5 } });
    const d = await task.defer({}, { delay: Duration.fromObject({ hours: 1 }) });
    assert.ok(c.enqueued && d.enqueued);
    const soon = (await row(c.id)).run_at as Date;
    const later = (await row(d.id)).run_at as Date;
    assert.ok(soon.getTime() > Date.now() + 4 * 60_000 && later.getTime() > soon.getTime());
  });

  it('sends one NOTIFY per queue on the schema channel for due jobs, when an idle worker takes the queue', async () => {
    const listener = new pg.Client({ connectionString: databaseUrl() });
    await listener.connect();
    const seen: string[] = [];
    listener.on('notification', (n) => seen.push(`${n.channel}/${n.payload}`));
    await listener.query(`LISTEN "${t.schema}_jobs"`);
    const settle = () => new Promise((resolve) => setTimeout(resolve, 300));
    const task = t.app.task('notify', { queue: 'nq' }, async () => {});
    const batch = [{ args: 1 }, { args: 2 }, { args: 3, queue: 'other' }, { args: 4, delay: { hours: 1 } }];
    try {
      // No idle worker: nobody to wake, no NOTIFY (it would serialise deferring commits).
      await task.deferMany(batch);
      await settle();
      assert.deepEqual(seen, []);
      // An idle worker on every queue: one NOTIFY per queue with due jobs, from TS and from SQL.
      await t.pool.query(
        `INSERT INTO "${t.schema}".workers (id, host, pid, queues, concurrency, stall_timeout_ms, idle)
         VALUES ('idle-1', 'h', 1, NULL, 1, 30000, true)`,
      );
      await task.deferMany(batch);
      await settle();
      assert.deepEqual(seen.sort(), [`${t.schema}_jobs/nq`, `${t.schema}_jobs/other`]);
      seen.length = 0;
      await viaSql({ task: 'notify', queue: 'sqlq' });
      await settle();
      assert.deepEqual(seen, [`${t.schema}_jobs/sqlq`]);
      // The idle worker only takes queue "nq": jobs for other queues wake nobody.
      seen.length = 0;
      await t.pool.query(`UPDATE "${t.schema}".workers SET queues = '{nq}' WHERE id = 'idle-1'`);
      await task.deferMany(batch);
      await settle();
      assert.deepEqual(seen, [`${t.schema}_jobs/nq`]);
    } finally {
      await listener.end();
      await t.pool.query(`DELETE FROM "${t.schema}".workers WHERE id = 'idle-1'`);
    }
  });

  it('rejects bad input with one line naming what was expected, and stores nothing', async () => {
    const before = await jobCount();
    const task = t.app.task('strict', {}, async () => {});
    const cases: [() => Promise<unknown>, RegExp][] = [
      [() => task.defer({}, { queue: 'a b' }), /queue name "a b" is invalid: use 1-100 letters/],
      [() => task.defer({}, { priority: 1.5 }), /priority 1.5 is invalid: expected an integer/],
      [() => task.defer({}, { runAt: 'tomorrow' }), /runAt "tomorrow" is invalid: expected a Date/],
      [() => task.defer({}, { delay: -5 }), /delay -5 is invalid: expected a non-negative duration/],
      [() => task.defer({}, { delay: 5, runAt: new Date() }), /both runAt and delay/],
      [() => task.defer({}, { lock: '' }), /lock "" is invalid/],
      [
        () => task.defer({}, { queueingLock: 'x', onConflict: 'skip' as 'ignore' }),
        /onConflict "skip" is invalid/,
      ],
      [() => task.defer({ n: 1n }), /arguments for task "strict" cannot be stored/],
      [() => t.app.defer('', {}), /task name "" is invalid/],
    ];
    for (const [call, message] of cases) {
      await assert.rejects(call, (error: unknown) => {
        assert.ok(error instanceof ValidationError, String(error));
        assert.match(error.message, message);
        assert.equal(error.message.split('\n').length, 1);
        return true;
      });
    }
    assert.throws(() => t.app.task('strict', {}, async () => {}), /already registered/);
    assert.throws(
      () => t.app.task('bad-retry', { retry: { attempts: 0 } }, async () => {}),
      /retry.attempts 0 is invalid/,
    );
    assert.throws(
      () => t.app.task('bad-stall', { onStall: 'maybe' as 'fail' }, async () => {}),
      /onStall "maybe"/,
    );
    assert.equal(await jobCount(), before);
  });
});
