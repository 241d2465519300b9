// @smoke
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { makeDueTimer } from '../../src/worker/dueTimer.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('due timer', () => {
  it('wakes once per 10 ms bucket however many jobs fall due, and never for the poll tick’s share', async () => {
    let woken = 0;
    const timer = makeDueTimer(1_000, () => {
      woken += 1;
    });
    // 10,000 retries due within ~100 ms: about 11 buckets, each woken for twice (5 and 100 ms
    // after); a few more if this loop itself takes a while. One timer each would be 20,000.
    for (let i = 0; i < 10_000; i += 1) timer.wakeIn(i % 100);
    timer.wakeIn(5_000); // beyond the poll interval: the poll tick's job
    await sleep(400);
    assert.ok(woken >= 2 && woken <= 40, `woke ${woken} times`);
    const before = woken;
    await sleep(100);
    assert.equal(woken, before, 'nothing pending after the last due time');
  });

  it('does nothing after clear()', async () => {
    let woken = 0;
    const timer = makeDueTimer(1_000, () => {
      woken += 1;
    });
    timer.wakeIn(20);
    timer.clear();
    timer.wakeIn(20);
    await sleep(200);
    assert.equal(woken, 0);
  });
});
