/**
 * A run locks its version's row only on its first page; later pages check, when they save
 * the checkpoint, that nothing changed the row meanwhile. An operator's pause or rewind
 * that lands while a page is in flight rolls that page back — its effects with it — and
 * every event is still applied exactly once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { concatMap, from } from 'rxjs';
import { appliedTable, countApplied, isolatedApp, type TestApp } from '../helpers.js';
import { processorState, waitFor } from '../jobs/support.js';

let t: TestApp;
let q: string;
const NAME = 'applier';
const controller = new AbortController();
let running: Promise<void>;
/** Pages the pipeline has started, and a hold on one of them while a test acts. */
let pages = 0;
let holdPage: number | undefined;
let entered: () => void = () => {};
let release: () => void = () => {};

before(async () => {
  t = await isolatedApp('proc_changed');
  q = `"${t.schema}"`;
  // How many times each event was applied.
  await t.pool.query(appliedTable(q));
  t.app.processor(
    NAME,
    { trigger: { onAppend: { debounce: { milliseconds: 10 } } }, batchSize: 10 },
    (events$, ctx) =>
      events$.pipe(
        countApplied(ctx.tx, q),
        concatMap((result) => {
          pages += 1;
          if (pages !== holdPage) return from([result]);
          entered();
          return from(new Promise<unknown>((resolve) => (release = () => resolve(result))));
        }),
      ),
  );
  running = t.app.run({ concurrency: 2, signal: controller.signal, pollInterval: 50 });
  await waitFor(
    'the worker to record the processor',
    async () => (await t.app.processors.status()).length > 0,
  );
});

after(async () => {
  release();
  controller.abort();
  await running;
  await t.cleanup();
});

/** Events applied, and applications counted (more than the events: some applied twice). */
const applied = async () => Number((await t.pool.query(`SELECT count(*) FROM ${q}.applied`)).rows[0].count);
const applications = async () =>
  Number((await t.pool.query(`SELECT coalesce(sum(n), 0) AS n FROM ${q}.applied`)).rows[0].n);
const status = async () => (await t.app.processors.status(NAME))[0]!;

async function holdSecondPageOf(count: number): Promise<void> {
  pages = 0;
  holdPage = 2;
  const held = new Promise<void>((resolve) => (entered = resolve));
  await t.app.events.append(
    Array.from({ length: count }, (_, i) => ({ stream: `s-${i}`, type: 'T', data: { i } })),
  );
  await held;
}

describe('a page in flight when an operator changes the processor', () => {
  it('is rolled back by a pause, and applied once after resume', async () => {
    await holdSecondPageOf(30);
    // The first page (10 events) committed; the second is applied in its transaction, uncommitted.
    await t.app.processors.pause(NAME); // does not wait for the page
    release();
    await waitFor(
      'the run to stop on the pause',
      async () => {
        // 'paused' shows as soon as the pause commits: wait for the run itself to end.
        const { rows } = await t.pool.query(
          `SELECT count(*)::int AS n FROM ${q}.jobs WHERE lock = $1 AND status = 'doing'`,
          [`processor:${NAME}@1`],
        );
        return (await status()).state === 'paused' && rows[0].n === 0;
      },
      20_000,
      () => processorState(t.pool, t.schema, NAME),
    );
    assert.equal(await applied(), 10, 'the page in flight was rolled back');
    assert.equal((await status()).lagEvents, 20);
    holdPage = undefined;
    await t.app.processors.resume(NAME);
    await waitFor('the processor to catch up', async () => (await status()).lagEvents === 0);
    assert.equal(await applied(), 30);
    assert.equal(await applications(), 30, 'no event applied twice');
  });

  it('is rolled back by a rewind, and the rewound range is applied again', async () => {
    await t.pool.query(`TRUNCATE ${q}.applied`);
    const first = await t.app.processors.replay(NAME, { from: 'start', dryRun: true });
    await holdSecondPageOf(30);
    // What `processors replay` writes, without its wait for the run: the race it closes.
    const start = first.checkpoint.split(':');
    await t.pool.query(
      `UPDATE ${q}.processors SET checkpoint_tx = $1::text::xid8, checkpoint_position = $2 WHERE name = $3`,
      [start[0], start[1], NAME],
    );
    release();
    // The rewound run applies the first 30 events (truncated above) and the 30 new ones.
    await waitFor(
      'the rewound range to be applied',
      async () => (await status()).lagEvents === 0 && (await applied()) === 60,
      20_000,
      () => processorState(t.pool, t.schema, NAME),
    );
    // The first page of the new events committed before the rewind, so the rewind applies
    // it again (10 events twice); the page in flight rolled back, so it was applied once.
    const { rows } = await t.pool.query(
      `SELECT n, count(*)::int AS events FROM ${q}.applied GROUP BY n ORDER BY n`,
    );
    assert.deepEqual(rows, [
      { n: 1, events: 50 },
      { n: 2, events: 10 },
    ]);
  });
});
