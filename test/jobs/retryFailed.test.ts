import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { isolatedApp, runCli, type TestApp } from '../helpers.js';

let t: TestApp;
let s: string;

before(async () => {
  t = await isolatedApp('retry_failed');
  s = `"${t.schema}"`;
  // Dead-lettered jobs: two tasks, two kinds of error, failed on two days.
  await t.pool.query(
    `INSERT INTO ${s}.jobs (task, status, attempts, max_attempts, last_error, errors, updated_at)
     SELECT task, 'failed', 5, 5, jsonb_build_object('message', msg), jsonb_build_array(jsonb_build_object('message', msg)), at
     FROM (VALUES ('send-email', 'SMTP timeout', '2026-11-01T10:00:00Z'::timestamptz),
                  ('send-email', 'SMTP timeout', '2026-11-02T10:00:00Z'),
                  ('send-email', 'mailbox full', '2026-11-02T11:00:00Z'),
                  ('charge-card', 'smtp TIMEOUT in a webhook', '2026-11-02T12:00:00Z')) AS v(task, msg, at)`,
  );
});
after(() => t.cleanup());

const cli = (args: string[]) => runCli([...args, '--schema', t.schema, '--json']);

async function states() {
  const { rows } = await t.pool.query(
    `SELECT status, count(*)::int AS n FROM ${s}.jobs GROUP BY 1 ORDER BY 1`,
  );
  return rows;
}

describe('outbatch jobs retry --failed', () => {
  it('--dry-run prints how many of which task match the filters and changes nothing', async () => {
    const before = await states();
    const all = JSON.parse((await cli(['jobs', 'retry', '--failed', '--dry-run'])).stdout);
    assert.deepEqual(all.byTask, [
      { task: 'charge-card', count: 1, skipped: 0 },
      { task: 'send-email', count: 3, skipped: 0 },
    ]);
    assert.equal(all.skipped, 0);
    const timeouts = JSON.parse(
      (await cli(['jobs', 'retry', '--failed', '--error-contains', 'smtp timeout', '--dry-run'])).stdout,
    );
    assert.equal(timeouts.total, 3);
    const window = JSON.parse(
      (
        await cli([
          'jobs',
          'retry',
          '--failed',
          '--task',
          'send-email',
          '--since',
          '2026-11-02T00:00:00Z',
          '--until',
          '2026-11-02T10:30:00Z',
          '--dry-run',
        ])
      ).stdout,
    );
    assert.deepEqual(window.byTask, [{ task: 'send-email', count: 1, skipped: 0 }]);
    assert.deepEqual(await states(), before);
  });

  it('retries the matching jobs with a fresh attempt budget and keeps their error history', async () => {
    const result = await cli([
      'jobs',
      'retry',
      '--failed',
      '--task',
      'send-email',
      '--error-contains',
      'SMTP',
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(JSON.parse(result.stdout).done.length, 2);
    const { rows } = await t.pool.query(
      `SELECT task, status, attempts, jsonb_array_length(errors) AS history FROM ${s}.jobs ORDER BY id`,
    );
    assert.deepEqual(
      rows.map((r) => [r.task, r.status, r.attempts, r.history]),
      [
        ['send-email', 'todo', 0, 1],
        ['send-email', 'todo', 0, 1],
        ['send-email', 'failed', 5, 1],
        ['charge-card', 'failed', 5, 1],
      ],
    );
  });

  it('two failed jobs with one queueing lock: the newest is retried, the older reported skipped with why (human and --json), no unique violation', async () => {
    const insert = async (lock: string, status = 'failed') =>
      (
        await t.pool.query<{ id: string }>(
          `INSERT INTO ${s}.jobs (task, queueing_lock, status, attempts) VALUES ('sync-crm', $1, $2, 5) RETURNING id::text`,
          [lock, status],
        )
      ).rows[0]!.id;
    const older = await insert('crm:1');
    const newer = await insert('crm:1');
    const filter = ['jobs', 'retry', '--failed', '--task', 'sync-crm'];

    const human = await runCli([...filter, '--dry-run', '--schema', t.schema]);
    assert.equal(human.code, 0, human.stderr);
    assert.match(
      human.stdout,
      /1 failed job\(s\) would be retried: sync-crm 1\n1 would be skipped: only the newest job per queueing lock/,
    );
    assert.deepEqual(JSON.parse((await cli([...filter, '--dry-run'])).stdout).byTask, [
      { task: 'sync-crm', count: 1, skipped: 1 },
    ]);

    const result = await runCli([...filter, '--schema', t.schema]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(
      result.stdout.trim(),
      `retried 1 job(s): ${newer}\nskipped job ${older}: newer job ${newer} with queueing lock "crm:1" was retried instead`,
    );
    const { rows } = await t.pool.query(
      `SELECT id::text, status FROM ${s}.jobs WHERE task = 'sync-crm' ORDER BY id`,
    );
    assert.deepEqual(rows, [
      { id: older, status: 'failed' },
      { id: newer, status: 'todo' },
    ]);

    // A job with that lock is waiting now: by filter and by id, the older one is skipped for it.
    const again = await cli(filter);
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(JSON.parse(again.stdout), {
      done: [],
      skipped: [{ id: older, reason: `queueing lock "crm:1" already has a waiting job ${newer}` }],
    });
    const byId = await cli(['jobs', 'retry', older]);
    assert.equal(byId.code, 0, byId.stderr);
    assert.deepEqual(JSON.parse(byId.stdout).skipped, [
      { id: older, reason: `queueing lock "crm:1" already has a waiting job ${newer}` },
    ]);
  });

  it('rejects filters without --failed, and bad times, with one line', async () => {
    const lone = await cli(['jobs', 'retry', '12', '--error-contains', 'x']);
    assert.equal(lone.code, 2);
    assert.match(lone.stderr.trim(), /--error-contains.* go with --failed/);
    const badTime = await cli(['jobs', 'retry', '--failed', '--until', 'tomorrow-ish', '--dry-run']);
    assert.equal(badTime.code, 2);
    assert.equal(badTime.stderr.trim().split('\n').length, 1);
  });
});
