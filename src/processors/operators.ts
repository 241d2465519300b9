/**
 * Small operators for the batch patterns pipelines write every day. Each works on one
 * page: `events$` completes at the page's end, so the grouping ones flush there.
 */
import {
  concatMap,
  defer,
  groupBy,
  map,
  mergeMap,
  type Observable,
  type OperatorFunction,
  reduce,
  toArray,
} from 'rxjs';
import type { Queryable } from '../db/queryable.js';

export interface Group<K, T> {
  key: K;
  items: T[];
}

/** Collects the page into one array per key, in order of each key's first appearance. */
export function groupItemsBy<T, K>(keyOf: (item: T) => K): OperatorFunction<T, Group<K, T>> {
  return (source) =>
    source.pipe(
      groupBy(keyOf),
      mergeMap((group) =>
        group.pipe(
          toArray(),
          map((items) => ({ key: group.key, items })),
        ),
      ),
    );
}

/** Groups a page of events by stream: one emission per stream with its events in order. */
export function groupByStream<T extends { stream: string }>(): OperatorFunction<T, Group<string, T>> {
  return groupItemsBy((event) => event.stream);
}

/**
 * Folds the page into one accumulator per key (a sum, a count, a max...) and emits
 * `{ key, value }` pairs at the page's end — the shape a bulk upsert wants.
 */
export function aggregateBy<T, K, A>(
  keyOf: (item: T) => K,
  seed: () => A,
  step: (acc: A, item: T) => A,
): OperatorFunction<T, { key: K; value: A }> {
  return (source) =>
    source.pipe(
      reduce((totals, item) => {
        const key = keyOf(item);
        totals.set(key, step(totals.has(key) ? totals.get(key)! : seed(), item));
        return totals;
      }, new Map<K, A>()),
      concatMap((totals) => [...totals].map(([key, value]) => ({ key, value }))),
    );
}

/**
 * Writes the whole page in one statement through `tx` (the page's transaction, so the
 * rows commit with the checkpoint). `sql` reads column arrays, e.g.
 * `INSERT INTO t (a, b) SELECT * FROM unnest($1::text[], $2::int[]) ON CONFLICT ...`,
 * and `toParams` turns the page's rows into those arrays. Emits the row count written.
 */
export function bulkWrite<T>(
  tx: Queryable,
  sql: string,
  toParams: (rows: T[]) => unknown[],
): OperatorFunction<T, number> {
  return (source) =>
    source.pipe(
      toArray(),
      // concatMap: one statement per page, after the page is complete.
      concatMap((rows) =>
        rows.length === 0
          ? [0]
          : defer(() => tx.query(sql, toParams(rows))).pipe(map((result) => result.rowCount ?? 0)),
      ),
    );
}

/** Column arrays from rows, for `bulkWrite`: `columns(rows, ['customer', 'total'])`. */
export function columns<T, K extends keyof T>(rows: T[], keys: K[]): unknown[] {
  return keys.map((key) => rows.map((row) => row[key]));
}

/**
 * Runs `effect` for each item, one at a time and in order (concatMap): deferring a job
 * per group through the page's transaction, say. Emits what each effect returns.
 */
export function eachInOrder<T, R>(effect: (item: T) => Promise<R>): OperatorFunction<T, R> {
  return (source: Observable<T>) => source.pipe(concatMap((item) => defer(() => effect(item))));
}
