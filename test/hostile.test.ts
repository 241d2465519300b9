import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ValidationError } from '../src/errors.js';
import { isolatedApp, runCli, type TestApp } from './helpers.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('hostile');
  t.app.task('hostile-task', {}, async () => {});
});
after(() => t.cleanup());

async function counts() {
  const { rows } = await t.pool.query(
    `SELECT (SELECT count(*) FROM "${t.schema}".events)::int AS events, (SELECT count(*) FROM "${t.schema}".jobs)::int AS jobs`,
  );
  return rows[0] as { events: number; jobs: number };
}

/** Rejected with one clear line (a ValidationError), and nothing written. */
async function rejected(what: string, action: () => Promise<unknown>, message?: RegExp) {
  const before = await counts();
  await assert.rejects(action, (error: unknown) => {
    assert.ok(error instanceof ValidationError, `${what}: expected a ValidationError, got ${String(error)}`);
    assert.equal(error.message.split('\n').length, 1, `${what}: one line`);
    if (message) assert.match(error.message, message, what);
    return true;
  });
  assert.deepEqual(await counts(), before, `${what}: nothing written`);
}

describe('hostile input to the API', () => {
  it('events: bad JSON values, NUL bytes, lone surrogates, deep nesting, huge payloads are rejected whole', async () => {
    const ok = { stream: 'fine-1', type: 'Fine', data: { a: 1 } };
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    let deep: unknown = 1;
    for (let i = 0; i < 100_000; i++) deep = [deep];
    const cases: [string, unknown][] = [
      ['function', { stream: 's', type: 'T', data: { f: () => 1 } }],
      ['bigint', { stream: 's', type: 'T', data: { n: 10n } }],
      ['circular', { stream: 's', type: 'T', data: circular }],
      ['undefined data', { stream: 's', type: 'T', data: undefined }],
      ['NaN', { stream: 's', type: 'T', data: { n: Number.NaN } }],
      ['NUL in data', { stream: 's', type: 'T', data: { text: 'a\u0000b' } }],
      ['NUL in stream', { stream: 'a\u0000b', type: 'T', data: {} }],
      ['lone surrogate', { stream: 's', type: 'T', data: { text: 'x\ud800y' } }],
      ['lone surrogate in type', { stream: 's', type: '\udc00', data: {} }],
      ['deep nesting', { stream: 's', type: 'T', data: deep }],
      ['huge', { stream: 's', type: 'T', data: { blob: 'x'.repeat(2_000_000) } }],
      ['empty stream', { stream: '', type: 'T', data: {} }],
      ['long type', { stream: 's', type: 'T'.repeat(201), data: {} }],
      ['not an object', 42],
    ];
    for (const [what, bad] of cases) {
      await rejected(what, () => t.app.events.append([ok, bad] as never));
    }
  });

  it('events: SQL-looking names are stored as they are', async () => {
    const stream = `x'); DROP TABLE "${t.schema}".events; --`;
    const stored = await t.app.events.append({
      stream,
      type: 'Robert"); DROP TABLE jobs;--',
      data: { q: "' OR 1=1" },
    });
    const again = await t.app.events.stream(stream);
    assert.equal(again[0]?.type, 'Robert"); DROP TABLE jobs;--');
    assert.equal(stored?.stream, stream);
  });

  it('read limits and checkpoints: negative, NaN, huge and garbage are rejected', async () => {
    for (const limit of [-1, 0, Number.NaN, 1e12, 1.5, '10' as never]) {
      await rejected(`limit ${String(limit)}`, () => t.app.events.read({ limit }));
    }
    for (const after of ['', 'abc', '1:2:3', '-1:5', `${'9'.repeat(30)}:1`]) {
      await rejected(`checkpoint ${after}`, () => t.app.events.read({ after }));
    }
  });

  it('jobs: hostile task, queue and lock names, bad numbers and times are rejected', async () => {
    const cases: [string, () => Promise<unknown>][] = [
      ['empty task', () => t.app.defer('', {})],
      ['queue with spaces', () => t.app.defer('hostile-task', {}, { queue: "a b'; --" })],
      ['priority NaN', () => t.app.defer('hostile-task', {}, { priority: Number.NaN })],
      ['priority huge', () => t.app.defer('hostile-task', {}, { priority: 1e30 })],
      ['priority float', () => t.app.defer('hostile-task', {}, { priority: 1.5 })],
      ['delay negative', () => t.app.defer('hostile-task', {}, { delay: -5 })],
      ['delay NaN', () => t.app.defer('hostile-task', {}, { delay: Number.NaN })],
      ['runAt garbage', () => t.app.defer('hostile-task', {}, { runAt: 'next tuesday' })],
      ['args function', () => t.app.defer('hostile-task', { f: () => 1 })],
      ['args NUL', () => t.app.defer('hostile-task', { s: '\u0000' })],
      ['args lone surrogate', () => t.app.defer('hostile-task', { s: '\ud800' })],
      ['empty lock', () => t.app.defer('hostile-task', {}, { lock: '' })],
      ['onConflict', () => t.app.defer('hostile-task', {}, { onConflict: 'maybe' as never })],
    ];
    for (const [what, action] of cases) await rejected(what, action);
  });
});

describe('hostile input to the CLI', () => {
  const cli = (args: string[], input?: string) => runCli([...args, '--schema', t.schema], {}, input);

  it('answers every bad input with one line, exit 2, and writes nothing', async () => {
    const hugeFile = path.join(os.tmpdir(), `outbatch-huge-${process.pid}.json`);
    await fs.writeFile(hugeFile, JSON.stringify({ blob: 'x'.repeat(1_100_000) }));
    const cases: [string, string[], string?][] = [
      ['malformed JSON', ['append', '--stream', 's', '--type', 'T', '--data', '{bad']],
      ['huge JSON', ['append', '--stream', 's', '--type', 'T', '--data', `@${hugeFile}`]],
      [
        'NUL in NDJSON',
        ['append', '--ndjson'],
        '{"stream":"s","type":"T","data":{}}\n{"stream":"s","type":"T","data":{"t":"\\u0000"}}\n',
      ],
      ['bad NDJSON line', ['append', '--ndjson'], '{"stream":"s","type":"T","data":{}}\nnot json\n'],
      ['defer bad args', ['defer', 'hostile-task', '--args', '[1,2']],
      ['defer NaN priority', ['defer', 'hostile-task', '--args', '{}', '--priority', 'NaN']],
      ['defer huge priority', ['defer', 'hostile-task', '--args', '{}', '--priority', '99999999999999']],
      ['defer bad delay', ['defer', 'hostile-task', '--args', '{}', '--delay', '-5 minutes']],
      ['unknown status', ['jobs', 'list', '--status', 'exploded']],
      ['non-numeric id', ['jobs', 'retry', '12abc']],
      ['negative position', ['events', 'show', '-1']],
    ];
    for (const [what, args, input] of cases) {
      const before = await counts();
      const result = await cli(args, input);
      assert.equal(result.code, 2, `${what}: exit 2 (${result.stderr})`);
      const lines = result.stderr.trim().split('\n');
      assert.equal(lines.length, 1, `${what}: one line, got ${result.stderr}`);
      assert.match(lines[0]!, /^outbatch: /, what);
      assert.deepEqual(await counts(), before, `${what}: nothing written`);
    }
  });
});
