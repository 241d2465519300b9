import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Clock } from '../../src/clock.js';
import { ValidationError } from '../../src/errors.js';
import { isolatedApp, runCli, type TestApp } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

let t: TestApp;
let now = new Date('2026-03-01T10:00:05Z');
const clock: Clock = { now: () => now };

before(async () => {
  t = await isolatedApp('sched_app', { clock });
  await t.pool.query(`CREATE TABLE "${t.schema}".ran (tick text, args jsonb)`);
});
after(() => t.cleanup());

describe('app.schedule', () => {
  it('defers the task once per tick with the tick time in its args; schedules list shows it', async () => {
    const report = t.app.task<{ kind: string; tick: string }>('report', {}, async (args) => {
      await t.pool.query(`INSERT INTO "${t.schema}".ran VALUES ($1, $2)`, [args.tick, JSON.stringify(args)]);
    });
    t.app.schedule('every-minute', { every: { minutes: 1 } }, report, { kind: 'full' });
    const controller = new AbortController();
    const running = t.app.run({ signal: controller.signal, pollInterval: 50 });
    try {
      await waitFor('the scheduler to record the schedule', async () => {
        const { rows } = await t.pool.query(`SELECT 1 FROM "${t.schema}".schedules`);
        return rows.length === 1;
      });
      now = new Date('2026-03-01T10:03:30Z'); // three ticks passed; catch-up default: the latest only
      await waitFor('the tick to run', async () => {
        const { rows } = await t.pool.query(`SELECT tick, args FROM "${t.schema}".ran`);
        return rows.length === 1 ? rows : undefined;
      });
    } finally {
      controller.abort();
      await running;
    }
    const { rows } = await t.pool.query(`SELECT tick, args FROM "${t.schema}".ran`);
    assert.deepEqual(rows, [
      { tick: '2026-03-01T10:03:00.000Z', args: { kind: 'full', tick: '2026-03-01T10:03:00.000Z' } },
    ]);

    const list = await runCli(['schedules', 'list', '--schema', t.schema, '--json']);
    assert.equal(list.code, 0, list.stderr);
    const [shown] = JSON.parse(list.stdout);
    assert.equal(shown.name, 'every-minute');
    assert.equal(shown.lastTick, '2026-03-01T10:03:00.000Z');
    assert.equal(shown.lastOutcome, 'done');
    assert.equal(shown.next.length, 3);
    assert.equal(shown.task, 'report');
  });

  it('rejects a duplicate schedule name and non-object args', () => {
    const noop = async () => {};
    t.app.schedule('once', { every: { minutes: 1 } }, noop);
    assert.throws(
      () => t.app.schedule('once', { every: { minutes: 2 } }, noop),
      /schedule "once" is defined twice/,
    );
    assert.throws(
      () => t.app.schedule('args', { every: { minutes: 1 } }, noop, [1] as never),
      /schedule "args": args must be an object/,
    );
  });

  it('refuses args that are not JSON when the schedule is defined, naming the schedule and the value', () => {
    const noop = async () => {};
    const every = { every: { minutes: 1 } };
    const refused = (name: string, args: Record<string, unknown>) => {
      try {
        t.app.schedule(name, every, noop, args);
      } catch (error) {
        assert.ok(error instanceof ValidationError, String(error));
        assert.equal(error.message.split('\n').length, 1);
        return error.message;
      }
      assert.fail(`schedule "${name}" was accepted`);
    };
    assert.match(refused('big', { count: 10n }), /^schedule "big": args\.count is a BigInt \(10n\)/);
    const cycle: Record<string, unknown> = { a: 1 };
    cycle.self = cycle;
    assert.match(refused('cycle', cycle), /^schedule "cycle": args\.self refers back to an enclosing object/);
    assert.match(refused('fn', { run: () => {} }), /^schedule "fn": args\.run is a function/);
    // Refused before it was recorded: the name is still free.
    t.app.schedule('big', every, noop, { count: '10' });
  });
});

describe('outbatch schedules check', () => {
  it('lists a valid app’s schedules with their next ticks', async () => {
    const result = await runCli(['schedules', 'check', '--app', 'test/fixtures/schedules-good.ts']);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /ok {2}nightly-report {2}30 2 \* \* \* \(Europe\/Paris\)/);
    assert.match(result.stdout, /2 schedule\(s\) valid/);
  });

  it('exits non-zero naming the first bad schedule and field', async () => {
    const result = await runCli(['schedules', 'check', '--app', 'test/fixtures/schedules-bad.ts']);
    assert.equal(result.code, 2);
    assert.match(result.stderr.trim(), /schedule "broken": cron "0 25 \* \* \*" is invalid/);
    assert.equal(result.stderr.trim().split('\n').length, 1);
  });
});
