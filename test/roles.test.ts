import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { isolatedApp, ROOT, type TestApp } from './helpers.js';

let t: TestApp;
const prefix = `t_roles_${randomBytes(3).toString('hex')}`;
const role = (name: string) => `${prefix}_${name}`;

async function applyRoles() {
  const sql = await fs.readFile(path.join(ROOT, 'ops', 'sql', 'roles.sql'), 'utf8');
  const client = await t.pool.connect();
  try {
    await client.query(`SET search_path TO "${t.schema}"; SET outbatch.role_prefix = '${prefix}'`);
    await client.query(sql);
  } finally {
    await client.query('RESET search_path; RESET outbatch.role_prefix').catch(() => {});
    client.release();
  }
}

before(async () => {
  t = await isolatedApp('roles');
  t.app.task('send', {}, async () => {});
  await applyRoles();
  await applyRoles(); // idempotent
});

after(async () => {
  await t.pool.query(`DROP SCHEMA IF EXISTS "${t.schema}" CASCADE`);
  for (const name of ['appender', 'worker', 'dashboard']) {
    await t.pool.query(`DROP ROLE IF EXISTS ${role(name)}`);
  }
  await t.cleanup();
});

/** Runs `fn` on one connection acting as the role; returns 'ok' or the SQLSTATE it failed with. */
async function as(name: string, fn: (client: pg.PoolClient) => Promise<unknown>): Promise<string> {
  const client = await t.pool.connect();
  try {
    await client.query('BEGIN');
    await client.query(`SET LOCAL ROLE ${role(name)}`);
    await fn(client);
    return 'ok';
  } catch (error) {
    return (error as { code?: string }).code ?? String(error);
  } finally {
    await client.query('ROLLBACK').catch(() => {});
    client.release();
  }
}

const DENIED = '42501';

describe('least-privilege roles (ops/sql/roles.sql)', () => {
  it('appender: appends events and defers jobs (SQL and TypeScript), and nothing else', async () => {
    const s = `"${t.schema}"`;
    const cases: [string, (c: pg.PoolClient) => Promise<unknown>, string][] = [
      [
        'append_events()',
        (c) => c.query(`SELECT * FROM ${s}.append_events('[{"stream":"a-1","type":"T","data":{}}]')`),
        'ok',
      ],
      [
        'app.events.append',
        (c) => t.app.events.append({ stream: 'a-2', type: 'T', data: {} }, { client: c }),
        'ok',
      ],
      ['defer_job()', (c) => c.query(`SELECT * FROM ${s}.defer_job('send', '{}')`), 'ok'],
      ['app.defer', (c) => t.app.defer('send', {}, { client: c }), 'ok'],
      ['claim a job', (c) => c.query(`UPDATE ${s}.jobs SET status = 'doing'`), DENIED],
      ['delete events', (c) => c.query(`DELETE FROM ${s}.events`), DENIED],
      ['read the audit log', (c) => c.query(`SELECT * FROM ${s}.audit_log`), DENIED],
      ['move a checkpoint', (c) => c.query(`UPDATE ${s}.processors SET checkpoint_position = 0`), DENIED],
      ['rewrite tx ids', (c) => c.query(`SELECT * FROM ${s}.rebase_tx_ids()`), DENIED],
      ['drop a table', (c) => c.query(`DROP TABLE ${s}.jobs`), DENIED],
    ];
    for (const [what, fn, expected] of cases) assert.equal(await as('appender', fn), expected, what);
  });

  it('worker: runs jobs, schedules and processors, audits; cannot rewrite or drop the log', async () => {
    const s = `"${t.schema}"`;
    const cases: [string, (c: pg.PoolClient) => Promise<unknown>, string][] = [
      ['claim a job', (c) => c.query(`UPDATE ${s}.jobs SET status = 'doing' WHERE false`), 'ok'],
      [
        'heartbeat',
        (c) =>
          c.query(
            `INSERT INTO ${s}.workers (id, host, pid, concurrency, stall_timeout_ms) VALUES ('w', 'h', 1, 1, 1000)`,
          ),
        'ok',
      ],
      ['move a checkpoint', (c) => c.query(`UPDATE ${s}.processors SET checkpoint_position = 0`), 'ok'],
      [
        'enqueue a tick',
        (c) =>
          c.query(`INSERT INTO ${s}.schedule_ticks (schedule, tick, enqueued_at) VALUES ('x', now(), now())`),
        'ok',
      ],
      [
        'audit',
        (c) =>
          c.query(`INSERT INTO ${s}.audit_log (actor, host, action, subject) VALUES ('a', 'h', 'x', 'y')`),
        'ok',
      ],
      [
        'append from a handler',
        (c) => t.app.events.append({ stream: 'w-1', type: 'T', data: {} }, { client: c }),
        'ok',
      ],
      ['delete events', (c) => c.query(`DELETE FROM ${s}.events`), DENIED],
      ['truncate events', (c) => c.query(`TRUNCATE ${s}.events`), DENIED],
      ['rewrite tx ids', (c) => c.query(`SELECT * FROM ${s}.rebase_tx_ids()`), DENIED],
      ['edit migrations', (c) => c.query(`DELETE FROM ${s}.migrations`), DENIED],
      ['drop a table', (c) => c.query(`DROP TABLE ${s}.jobs`), DENIED],
    ];
    for (const [what, fn, expected] of cases) assert.equal(await as('worker', fn), expected, what);
  });

  it('dashboard: reads everything, including other sessions’ transactions; writes nothing', async () => {
    const s = `"${t.schema}"`;
    const cases: [string, (c: pg.PoolClient) => Promise<unknown>, string][] = [
      ['read jobs', (c) => c.query(`SELECT * FROM ${s}.job_states LIMIT 1`), 'ok'],
      ['read processors', (c) => c.query(`SELECT * FROM ${s}.processors`), 'ok'],
      ['read events', (c) => c.query(`SELECT * FROM ${s}.events LIMIT 1`), 'ok'],
      ['read the audit log', (c) => c.query(`SELECT * FROM ${s}.audit_log`), 'ok'],
      [
        'append',
        (c) => c.query(`SELECT * FROM ${s}.append_events('[{"stream":"d-1","type":"T","data":{}}]')`),
        DENIED,
      ],
      ['retry a job', (c) => c.query(`UPDATE ${s}.jobs SET status = 'todo'`), DENIED],
      ['pause a processor', (c) => c.query(`UPDATE ${s}.processors SET paused = true`), DENIED],
    ];
    for (const [what, fn, expected] of cases) assert.equal(await as('dashboard', fn), expected, what);
    const seen = await t.pool.connect();
    try {
      await seen.query('BEGIN');
      await seen.query('SELECT pg_current_xact_id()');
      let visible = false;
      assert.equal(
        await as('dashboard', async (c) => {
          const { rows } = await c.query(
            `SELECT xact_start FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()`,
          );
          visible = rows.some((row) => row.xact_start !== null);
        }),
        'ok',
      );
      assert.ok(visible, 'the oldest transaction is visible to the dashboard role');
    } finally {
      await seen.query('ROLLBACK');
      seen.release();
    }
  });
});
