// @smoke
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TestScheduler } from 'rxjs/testing';
import { aggregateBy, columns, groupByStream, groupItemsBy } from '../../src/processors/operators.js';

function scheduler() {
  return new TestScheduler((actual, expected) => assert.deepEqual(actual, expected));
}

const e = (stream: string, n: number) => ({ stream, n });

describe('processor operators (marble)', () => {
  it('groupByStream emits one group per stream when the page completes', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const page = cold('a-b-c-d|', { a: e('s1', 1), b: e('s2', 2), c: e('s1', 3), d: e('s3', 4) });
      expectObservable(page.pipe(groupByStream())).toBe('-------(xyz|)', {
        x: { key: 's1', items: [e('s1', 1), e('s1', 3)] },
        y: { key: 's2', items: [e('s2', 2)] },
        z: { key: 's3', items: [e('s3', 4)] },
      });
    });
  });

  it('groupItemsBy on an empty page emits nothing', () => {
    scheduler().run(({ cold, expectObservable }) => {
      expectObservable(cold<number>('---|').pipe(groupItemsBy((n) => n % 2))).toBe('---|');
    });
  });

  it('aggregateBy folds per key and flushes at the page end', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const page = cold('a-b-c|', { a: e('x', 5), b: e('y', 1), c: e('x', 7) });
      const totals = page.pipe(
        aggregateBy(
          (event) => event.stream,
          () => 0,
          (sum, event) => sum + event.n,
        ),
      );
      expectObservable(totals).toBe('-----(pq|)', { p: { key: 'x', value: 12 }, q: { key: 'y', value: 1 } });
    });
  });

  it('an error in the page propagates (so the page rolls back)', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const page = cold('a-#', { a: e('x', 1) }, new Error('bad event'));
      expectObservable(page.pipe(groupByStream())).toBe('--#', undefined, new Error('bad event'));
    });
  });

  it('columns transposes rows into arrays for unnest', () => {
    assert.deepEqual(
      columns(
        [
          { a: 1, b: 'x' },
          { a: 2, b: 'y' },
        ],
        ['b', 'a'],
      ),
      [
        ['x', 'y'],
        [1, 2],
      ],
    );
  });
});
