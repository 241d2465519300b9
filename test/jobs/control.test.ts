import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ValidationError } from '../../src/errors.js';
import { isolatedApp, type TestApp } from '../helpers.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('jobs_control');
});
after(async () => t.cleanup());

const statuses = async (ids: string[]) =>
  (
    await t.pool.query<{ status: string }>(
      `SELECT status FROM "${t.schema}".jobs WHERE id = ANY ($1::bigint[]) ORDER BY array_position($1::bigint[], id)`,
      [ids],
    )
  ).rows.map((r) => r.status);

const insert = async (values: string) =>
  (await t.pool.query(`INSERT INTO "${t.schema}".jobs ${values} RETURNING id::text`)).rows.map(
    (r) => r.id as string,
  );

describe('app.jobs', () => {
  it('retry, cancel and delete skip what they must not touch, and say why', async () => {
    const [waiting] = await insert(`(task, queueing_lock) VALUES ('sync', 'sync:1')`);
    const [failed] = await insert(
      `(task, queueing_lock, status, attempts) VALUES ('sync', 'sync:1', 'failed', 5)`,
    );
    const [running] = await insert(`(task, status, worker_id) VALUES ('sync', 'doing', 'w1')`);
    const retry = await t.app.jobs.retry({ ids: [failed!, running!, '424242'] });
    assert.deepEqual(retry.done, []);
    assert.deepEqual(retry.skipped, [
      { id: failed, reason: `queueing lock "sync:1" already has a waiting job ${waiting}` },
      { id: running, reason: 'it is dirty' },
      { id: '424242', reason: 'not found' },
    ]);
    // A running (here dirty) job is cancelled too (docs/lifecycle.md); a finished one is not.
    const cancel = await t.app.jobs.cancel([waiting!, running!, failed!]);
    assert.deepEqual(cancel.done, [waiting, running]);
    assert.deepEqual(cancel.skipped, [{ id: failed, reason: 'it is failed' }]);
    // With the waiting job cancelled, the failed one can go back to todo.
    assert.deepEqual((await t.app.jobs.retry({ ids: [failed!] })).done, [failed]);
    const [stillRunning] = await insert(`(task, status, worker_id) VALUES ('sync', 'doing', 'w1')`);
    const del = await t.app.jobs.delete([waiting!, stillRunning!]);
    assert.deepEqual(del.done, [waiting]);
    assert.equal((await t.app.jobs.show(stillRunning!))?.state, 'dirty');
    assert.deepEqual(
      (await t.app.jobs.list({ status: 'todo' })).map((j) => j.id),
      [failed],
    );
  });

  it('retry by ids: only the newest failed job per queueing lock goes back to todo, the older is skipped with why', async () => {
    const [older, newer] = await insert(
      `(task, queueing_lock, status, attempts) VALUES ('report', 'report:1', 'failed', 5), ('report', 'report:1', 'cancelled', 5)`,
    );
    const [plain] = await insert(`(task, status, attempts) VALUES ('report', 'failed', 5)`);
    const result = await t.app.jobs.retry({ ids: [older!, plain!, newer!] });
    assert.deepEqual(result, {
      done: [newer, plain],
      skipped: [
        { id: older, reason: `newer job ${newer} with queueing lock "report:1" was retried instead` },
      ],
    });
    assert.deepEqual(await statuses([older!, newer!, plain!]), ['failed', 'todo', 'todo']);
    // Now one waits: retrying the older one again is skipped for that, not a unique violation.
    assert.deepEqual((await t.app.jobs.retry({ ids: [older!] })).skipped, [
      { id: older, reason: `queueing lock "report:1" already has a waiting job ${newer}` },
    ]);
  });

  it('retry --failed: per queueing lock the newest, none while one waits; the dry run counts the same; audited once per retried job', async () => {
    const [a1, a2, b1, b2, waiting, solo] = await insert(
      `(task, queueing_lock, status, attempts) VALUES
         ('digest', 'digest:a', 'failed', 5), ('digest', 'digest:a', 'failed', 5),
         ('digest', 'digest:b', 'failed', 5), ('digest', 'digest:b', 'failed', 5),
         ('digest', 'digest:b', 'todo', 0), ('digest', NULL, 'failed', 5)`,
    );
    const filter = { failed: true as const, task: 'digest' };
    assert.deepEqual(await t.app.jobs.previewRetry(filter), [{ task: 'digest', count: 2, skipped: 3 }]);
    const result = await t.app.jobs.retry(filter);
    assert.deepEqual(result, {
      done: [a2, solo],
      skipped: [
        { id: a1, reason: `newer job ${a2} with queueing lock "digest:a" was retried instead` },
        { id: b1, reason: `queueing lock "digest:b" already has a waiting job ${waiting}` },
        { id: b2, reason: `queueing lock "digest:b" already has a waiting job ${waiting}` },
      ],
    });
    assert.deepEqual(await statuses([a1!, a2!, b1!, b2!, waiting!, solo!]), [
      'failed',
      'todo',
      'failed',
      'failed',
      'todo',
      'todo',
    ]);
    const audit = await t.pool.query<{ subject: string }>(
      `SELECT subject FROM "${t.schema}".audit_log WHERE action = 'jobs.retry' AND subject = ANY ($1) ORDER BY id`,
      [[a1, a2, b1, b2, solo].map((id) => `job:${id}`)],
    );
    assert.deepEqual(
      audit.rows.map((r) => r.subject),
      [`job:${a2}`, `job:${solo}`],
    );
    assert.deepEqual(await t.app.jobs.previewRetry(filter), [{ task: 'digest', count: 0, skipped: 3 }]);
  });

  it('returns the ids it acted on in numeric order (9 before 10), for cancel, retry and delete', async () => {
    const ids = await insert(`(task) SELECT 'bulk' FROM generate_series(1, 12)`);
    await t.pool.query(`SELECT setval(pg_get_serial_sequence('"${t.schema}".jobs', 'id'), 1000)`);
    const more = await insert(`(task) SELECT 'bulk' FROM generate_series(1, 3)`);
    const all = [...ids, ...more];
    const numeric = [...all].sort((a, b) => Number(a) - Number(b));
    assert.deepEqual((await t.app.jobs.cancel([...all].reverse())).done, numeric);
    assert.deepEqual((await t.app.jobs.retry({ ids: all })).done, numeric);
    assert.deepEqual((await t.app.jobs.delete(all)).done, numeric);
  });

  it('rejects bad ids, states and limits before touching anything', async () => {
    await assert.rejects(t.app.jobs.cancel(['1; drop table jobs']), ValidationError);
    await assert.rejects(t.app.jobs.delete([]), /no job ids given/);
    await assert.rejects(t.app.jobs.list({ status: 'asleep' }), /status "asleep" is invalid/);
    await assert.rejects(t.app.jobs.list({ limit: 0 }), /limit 0 is invalid/);
    await assert.rejects(
      t.app.jobs.retry({ failed: true, since: 'last week' }),
      /since "last week" is invalid: expected a Date/,
    );
  });
});
