import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ValidationError } from '../../src/errors.js';
import { isolatedApp, type TestApp } from '../helpers.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('jobs_control');
});
after(async () => t.cleanup());

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
      { id: failed, reason: `job ${waiting} with the same queueing lock is already waiting` },
      { id: running, reason: 'it is dirty' },
      { id: '424242', reason: 'not found' },
    ]);
    const cancel = await t.app.jobs.cancel([waiting!, running!]);
    assert.deepEqual(cancel.done, [waiting]);
    assert.deepEqual(cancel.skipped, [{ id: running, reason: 'it is dirty' }]);
    // With the waiting job cancelled, the failed one can go back to todo.
    assert.deepEqual((await t.app.jobs.retry({ ids: [failed!] })).done, [failed]);
    const del = await t.app.jobs.delete([waiting!, running!]);
    assert.deepEqual(del.done, [waiting]);
    assert.equal((await t.app.jobs.show(running!))?.state, 'dirty');
    assert.deepEqual(
      (await t.app.jobs.list({ status: 'todo' })).map((j) => j.id),
      [failed],
    );
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
