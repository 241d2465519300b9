import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CLI, databaseUrl, isolatedApp, ROOT, runCli, type TestApp } from '../helpers.js';
import { waitUntilReadable } from './readable.js';

describe('cli: append, events tail/show', () => {
  let t: TestApp;
  let env: NodeJS.ProcessEnv;
  before(async () => {
    t = await isolatedApp('ev_cli');
    env = { DATABASE_URL: databaseUrl(), OUTBATCH_SCHEMA: t.schema };
  });
  after(async () => t.cleanup());

  const count = async () =>
    Number((await t.pool.query(`SELECT count(*) FROM "${t.schema}".events`)).rows[0].count);

  it('appends one event from flags, with data from a file', async () => {
    const file = path.join(tmpdir(), `outbatch-data-${process.pid}.json`);
    writeFileSync(file, '{"total": 42}');
    const result = await runCli(
      [
        'append',
        '--stream',
        'order-1',
        '--type',
        'OrderPlaced',
        '--data',
        `@${file}`,
        '--expected-version',
        'no_stream',
      ],
      env,
    );
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^appended: position \d+, order-1@1, checkpoint \d+:\d+/);
    const json = await runCli(
      ['--json', 'append', '--stream', 'order-1', '--type', 'T', '--data', '[1]'],
      env,
    );
    assert.equal(JSON.parse(json.stdout).streamVersion, 2);
    const conflict = await runCli(
      ['append', '--stream', 'order-1', '--type', 'T', '--data', '1', '--expected-version', '0'],
      env,
    );
    assert.equal(conflict.code, 1);
    assert.match(conflict.stderr, /^outbatch: stream "order-1" is at version 2, expected 0/);
  });

  it('rejects bad flags with one line, exit 2, nothing written', async () => {
    const before = await count();
    for (const [args, message] of [
      [['append', '--stream', 's', '--type', 'T'], /missing --data/],
      [['append', '--stream', 's', '--type', 'T', '--data', '{oops'], /--data is not valid JSON/],
      [['append', '--stream', '', '--type', 'T', '--data', '1'], /event\.stream is an empty string/],
      [
        ['append', '--stream', 's', '--type', 'T', '--data', '1', '--expected-version', 'x'],
        /--expected-version "x"/,
      ],
      [['events', 'show', 'abc'], /position "abc" is invalid/],
      [['events', 'tail', '--after', 'nope'], /checkpoint "nope" is invalid/],
    ] as const) {
      const result = await runCli([...args], env);
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr.trim(), message);
      assert.equal(result.stderr.trim().split('\n').length, 1);
    }
    assert.equal(await count(), before);
  });

  it('appends NDJSON from stdin in one transaction, with a summary and progress for large inputs', async () => {
    const lines = Array.from({ length: 20_000 }, (_, i) =>
      JSON.stringify({ stream: `bulk-${i % 7}`, type: 'Bulk', data: { i }, idempotencyKey: `bulk-${i}` }),
    );
    const result = await runCli(['append', '--ndjson'], env, `${lines.join('\n')}\n`);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^appended 20000 event\(s\) to 7 stream\(s\); positions \d+\.\.\d+/);
    assert.match(result.stderr, /appended 20000\/20000 events/);
    const again = await runCli(['--json', 'append', '--ndjson'], env, lines.slice(0, 3).join('\n'));
    assert.deepEqual(JSON.parse(again.stdout), {
      appended: 0,
      duplicates: 3,
      streams: 0,
      firstPosition: null,
      lastPosition: null,
    });
  });

  it('a malformed NDJSON line reports its line number and nothing from that input is written', async () => {
    const before = await count();
    const good = JSON.stringify({ stream: 'nd', type: 'T', data: 1 });
    for (const [input, message] of [
      [`${good}\n${good}\n{"stream": "nd", "type":\n${good}\n`, /^outbatch: line 3: not valid JSON/],
      [
        `${good}\n\n${JSON.stringify({ stream: 'nd', type: 'T', data: 1, metadata: 5 })}\n`,
        /^outbatch: line 3: event\.metadata is 5/,
      ],
      ['', /no events on standard input/],
    ] as const) {
      const result = await runCli(['append', '--ndjson'], env, input);
      assert.equal(result.code, 2);
      assert.match(result.stderr, message);
    }
    assert.equal(await count(), before);
  });

  it('events tail prints the newest events, filtered, as lines or JSON; show prints one', async () => {
    await waitUntilReadable(t.pool, t.schema);
    const tail = await runCli(['events', 'tail', '-n', '3', '--type', 'OrderPlaced', 'T'], env);
    assert.equal(tail.code, 0, tail.stderr);
    const lines = tail.stdout.trim().split('\n');
    assert.equal(lines.length, 2);
    assert.match(lines[0]!, /order-1@1 {2}OrderPlaced {2}\{"total":42\}/);
    const json = await runCli(['--json', 'events', 'tail', '-n', '2', '--stream-prefix', 'bulk-'], env);
    const events = json.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      events.map((e) => e.data.i),
      [19998, 19999],
    );
    const show = await runCli(['--json', 'events', 'show', events[0].position], env);
    assert.equal(JSON.parse(show.stdout).idempotencyKey, 'bulk-19998');
    const missing = await runCli(['events', 'show', '987654321'], env);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no event at position 987654321/);
  });

  it('events tail --follow prints new events until interrupted', async () => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', CLI, '--json', 'events', 'tail', '-f', '-n', '1', '--stream-prefix', 'live'],
      {
        cwd: ROOT,
        env: { ...process.env, ...env, LOG_LEVEL: 'warn' },
      },
    );
    let stdout = '';
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
    });
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    // Wait until it listens, append, and wait until it printed.
    await until(async () => {
      const { rows } = await t.pool.query(
        `SELECT 1 FROM pg_stat_activity WHERE application_name = 'outbatch-listen' AND query = $1`,
        [`LISTEN "${t.schema}_events"`],
      );
      return rows.length > 0;
    });
    await t.app.events.append([
      { stream: 'live-1', type: 'T', data: 1 },
      { stream: 'other', type: 'T', data: 2 },
      { stream: 'live-2', type: 'T', data: 3 },
    ]);
    await until(async () => stdout.trim().split('\n').length >= 2);
    child.kill('SIGINT');
    assert.equal(await exited, 0);
    assert.deepEqual(
      stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).data),
      [1, 3],
    );
  });
});

async function until(condition: () => Promise<boolean>): Promise<void> {
  for (;;) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
