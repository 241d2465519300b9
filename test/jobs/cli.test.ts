import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { databaseUrl, isolatedApp, runCli, type TestApp } from '../helpers.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('jobs_cli');
});
after(async () => t.cleanup());

const cli = (...args: string[]) => runCli([...args, '--schema', t.schema], { DATABASE_URL: databaseUrl() });
const count = async () =>
  Number((await t.pool.query(`SELECT count(*) FROM "${t.schema}".jobs`)).rows[0].count);
const snapshot = async () =>
  JSON.stringify(
    (await t.pool.query(`SELECT id, status, attempts FROM "${t.schema}".jobs ORDER BY id`)).rows,
  );

function oneLine(text: string): string {
  const lines = text.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line, got: ${text}`);
  return lines[0]!;
}

describe('jobs cli', () => {
  it('defers a job, lists, shows, cancels, retries and deletes it, with --json', async () => {
    const deferred = await cli(
      'defer',
      'send-email',
      '--args',
      '{"to":"a@example.com"}',
      '--queue',
      'mail',
      '--priority',
      '5',
      '--json',
    );
    assert.equal(deferred.code, 0, deferred.stderr);
    const { id } = JSON.parse(deferred.stdout) as { id: string };
    const scheduled = await cli('defer', 'send-email', '--delay', '5m', '--queueing-lock', 'digest');
    assert.equal(scheduled.code, 0, scheduled.stderr);
    assert.match(scheduled.stdout, /^deferred job \d+ \(task send-email\)/);
    const again = await cli('defer', 'send-email', '--queueing-lock', 'digest', '--on-conflict', 'ignore');
    assert.match(again.stdout, /not deferred: job \d+ with queueing lock "digest" is already waiting/);
    const conflict = await cli('defer', 'send-email', '--queueing-lock', 'digest');
    assert.equal(conflict.code, 1);
    assert.match(oneLine(conflict.stderr), /already enqueued \(job \d+\): pass onConflict: 'ignore'/);

    const list = await cli('jobs', 'list', '--status', 'scheduled', '--json');
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(
      (JSON.parse(list.stdout) as { task: string; state: string }[]).map((j) => j.state),
      ['scheduled'],
    );
    const human = await cli('jobs', 'list', '--queue', 'mail');
    assert.match(human.stdout, /^id\s+task\s+queue\s+state/);
    assert.match(human.stdout, /send-email\s+mail\s+todo/);

    const show = await cli('jobs', 'show', id);
    assert.match(show.stdout, new RegExp(`job ${id}: send-email on queue mail, todo`));
    assert.match(show.stdout, /args \{"to":"a@example.com"\}/);

    const cancel = await cli('jobs', 'cancel', id, '999999');
    assert.equal(cancel.code, 0);
    assert.match(cancel.stdout, new RegExp(`cancelled 1 job\\(s\\): ${id}\nskipped job 999999: not found`));
    const retry = await cli('jobs', 'retry', id);
    assert.match(retry.stdout, new RegExp(`retried 1 job\\(s\\): ${id}`));
    const audit = await t.pool.query(
      `SELECT action FROM "${t.schema}".audit_log WHERE subject = $1 ORDER BY id`,
      [`job:${id}`],
    );
    assert.deepEqual(
      audit.rows.map((r) => r.action),
      ['jobs.cancel', 'jobs.retry'],
    );
    const del = await cli('jobs', 'delete', id);
    assert.match(del.stdout, /deleted 1 job/);
    assert.equal((await t.pool.query(`SELECT 1 FROM "${t.schema}".jobs WHERE id = $1`, [id])).rows.length, 0);

    const stats = await cli('jobs', 'stats', '--json');
    assert.equal(stats.code, 0, stats.stderr);
    assert.equal(
      (JSON.parse(stats.stdout) as { task: string; now: { scheduled: number } }[])[0]!.now.scheduled,
      1,
    );
  });

  it('retries failed jobs by filter', async () => {
    await t.pool.query(
      `INSERT INTO "${t.schema}".jobs (task, status, attempts) VALUES ('broken', 'failed', 5), ('broken', 'failed', 5), ('other', 'failed', 5)`,
    );
    const result = await cli('jobs', 'retry', '--failed', '--task', 'broken', '--json');
    assert.equal(result.code, 0, result.stderr);
    assert.equal((JSON.parse(result.stdout) as { done: string[] }).done.length, 2);
    const left = await t.pool.query(
      `SELECT task, status, attempts FROM "${t.schema}".jobs WHERE task IN ('broken', 'other') ORDER BY task`,
    );
    assert.deepEqual(
      left.rows.map((r) => `${r.task}:${r.status}:${r.attempts}`),
      ['broken:todo:0', 'broken:todo:0', 'other:failed:5'],
    );
  });

  it('jobs stats says which task no live worker knows (human and --json)', async () => {
    // A live worker that registered only task a (migration 024); b's job has nobody.
    await t.pool.query(
      `INSERT INTO "${t.schema}".workers (id, host, pid, concurrency, stall_timeout_ms, last_seen_at, tasks)
       VALUES ('only-a', 'h', 1, 1, 30000, now(), '{a}')`,
    );
    try {
      await t.app.defer('a', {});
      await t.app.defer('b', {});
      const human = await cli('jobs', 'stats');
      assert.equal(human.code, 0, human.stderr);
      assert.match(human.stdout, /^no live worker knows task b: 1 job\(s\) waiting$/m);
      assert.doesNotMatch(human.stdout, /knows task a:/);
      const json = await cli('jobs', 'stats', '--json');
      const stats = JSON.parse(json.stdout) as { task: string; withoutWorker: number }[];
      assert.equal(stats.find((s) => s.task === 'b')?.withoutWorker, 1);
      assert.equal(stats.find((s) => s.task === 'a')?.withoutWorker, 0);
    } finally {
      await t.pool.query(`DELETE FROM "${t.schema}".workers WHERE id = 'only-a'`);
    }
  });

  it('bad input: one line, exit 2, nothing changed', async () => {
    const before = await snapshot();
    const cases: [string[], RegExp][] = [
      [['defer', 'x', '--args', '{bad json'], /--args is not valid JSON .*expected e\.g\./],
      [['defer', 'x', '--priority', 'high'], /--priority "high" is invalid: expected an integer/],
      [['defer', 'x', '--delay', 'soon'], /--delay "soon" is invalid: expected a duration such as 90s/],
      [['defer', 'x', '--run-at', 'tomorrow'], /runAt "tomorrow" is invalid/],
      [['defer', 'x', '--queue', 'a b'], /queue name "a b" is invalid/],
      [['defer', 'x', '--queueing-lock', 'k', '--on-conflict', 'maybe'], /--on-conflict "maybe" is invalid/],
      [
        ['jobs', 'list', '--status', 'sleeping'],
        /status "sleeping" is invalid: expected one of todo, scheduled, doing, dirty, failed, cancelled, succeeded/,
      ],
      [['jobs', 'show', 'abc'], /job id "abc" is invalid: expected a positive integer/],
      [['jobs', 'cancel', '1', 'x2'], /job id "x2" is invalid/],
      [['jobs', 'delete', '-5'], /./],
      [['jobs', 'retry'], /give job ids, or --failed/],
      [['jobs', 'retry', '--failed', '--since', 'yesterday'], /--since "yesterday" is invalid/],
      [['worker', '--app', 'no/such/module.js'], /--app module "no\/such\/module.js" could not be loaded/],
      [['worker', '--app', 'package.json'], /could not be loaded|exports no app/],
      [
        ['worker', '--app', 'test/fixtures/jobs-app.ts', '--concurrency', 'lots'],
        /--concurrency "lots" is invalid/,
      ],
    ];
    for (const [args, message] of cases) {
      const result = await cli(...args);
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.match(oneLine(result.stderr), message, args.join(' '));
    }
    assert.equal(await snapshot(), before);
    assert.ok((await count()) >= 0);
  });
});
