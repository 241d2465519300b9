/**
 * The compile-time half of typed events and tasks: `tsc --noEmit` over test/types/, whose
 * plain lines must compile and whose `@ts-expect-error` lines must not (an unused directive
 * is itself an error), so both what is accepted and what is refused are proven. A probe file
 * checked in the same run shows the check can fail at all.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ROOT, startProcess } from '../helpers.js';

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');

describe('typed events and tasks (tsc over test/types)', () => {
  fs.mkdirSync(path.join(ROOT, '.outbatch'), { recursive: true });
  const dir = fs.mkdtempSync(path.join(ROOT, '.outbatch', 'type-probe-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('accepts the accepted cases and refuses every refused one', async () => {
    const entry = path
      .relative(dir, path.join(ROOT, 'src', 'index.js'))
      .split(path.sep)
      .join('/');
    fs.writeFileSync(
      path.join(dir, 'probe.ts'),
      [
        `import { createApp } from '${entry}';`,
        'const app = createApp<{ events: { A: { n: number } } }>();',
        '// @ts-expect-error (unused: this append is fine)',
        "await app.events.append({ stream: 's', type: 'A', data: { n: 1 } });",
        "await app.events.append({ stream: 's', type: 'A', data: { n: 'one' } });",
        'export {};',
        '',
      ].join('\n'),
    );
    fs.writeFileSync(
      path.join(dir, 'tsconfig.json'),
      JSON.stringify({
        extends: path.join(ROOT, 'test', 'types', 'tsconfig.json'),
        include: [path.join(ROOT, 'test', 'types'), path.join(dir, 'probe.ts')],
      }),
    );
    const { code, stdout, stderr } = await startProcess(process.execPath, [
      tsc,
      '-p',
      dir,
      '--pretty',
      'false',
    ]).result;
    const errors = stdout.split('\n').filter((line) => /error TS\d+/.test(line));
    const outside = errors.filter((line) => !line.includes('probe.ts'));
    assert.deepEqual(outside, [], `test/types does not type-check as its comments say:\n${stdout}${stderr}`);
    assert.equal(code, 2, 'tsc fails on the probe');
    assert.deepEqual(
      errors.map((line) => /probe\.ts\((\d+),\d+\): error (TS\d+)/.exec(line)?.slice(1)),
      [
        ['3', 'TS2578'], // Unused '@ts-expect-error' directive
        ['5', 'TS2769'], // no overload of append takes n: 'one'
      ],
    );
  });
});
