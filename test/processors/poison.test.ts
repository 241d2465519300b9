import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Observable } from 'rxjs';
import { bulkWrite, type ProcessorOptions, type StoredEvent } from '../../src/index.js';
import { isolatedApp, runCli, type TestApp } from '../helpers.js';
import { processorState, waitFor } from '../jobs/support.js';

let t: TestApp;
let q: string;
let fixed = false;
/** How many pages handed each event to a pipeline, by "<processor>:<position>". */
const handed = new Map<string, number>();
const controller = new AbortController();
let running: Promise<void>;

const options = (onPoison: 'halt' | 'skip'): ProcessorOptions => ({
  trigger: { onAppend: { debounce: { milliseconds: 10 } } },
  batchSize: 10,
  onPoison,
  retry: { attempts: 2, backoff: { initial: { milliseconds: 10 }, max: { milliseconds: 20 } } },
  streamPrefix: `${onPoison}-`,
});

before(async () => {
  t = await isolatedApp('poison');
  q = `"${t.schema}"`;
  await t.pool.query(`CREATE TABLE ${q}.seen (processor text, position bigint)`);
  for (const mode of ['halt', 'skip'] as const) {
    t.app.processor(`poison-${mode}`, options(mode), (events$, ctx) =>
      events$.pipe(
        bulkWrite(
          ctx.tx,
          `INSERT INTO ${q}.seen SELECT $1, unnest($2::bigint[])`,
          (events: StoredEvent[]) => {
            for (const event of events) {
              const key = `${ctx.processor}:${event.position}`;
              handed.set(key, (handed.get(key) ?? 0) + 1);
            }
            const bad = events.find((event) => (event.data as { poison?: boolean }).poison && !fixed);
            if (bad) throw new Error(`cannot handle order ${(bad.data as { n: number }).n}`);
            return [ctx.processor, events.map((event) => event.position.toString())];
          },
        ),
      ),
    );
  }
  running = t.app.run({ concurrency: 4, signal: controller.signal, pollInterval: 50 });
  await waitFor('the worker to record the processors', async () => {
    const { rows } = await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.processors`);
    return rows[0].n === 2;
  });
});

after(async () => {
  controller.abort();
  await running;
  await t.cleanup();
});

async function appendOrders(prefix: string, count: number, poisonAt: number) {
  const events = Array.from({ length: count }, (_, n) => ({
    stream: `${prefix}-${n}`,
    type: 'Order',
    data: n === poisonAt ? { n, poison: true } : { n },
  }));
  return t.app.events.append(events);
}

async function seen(processor: string): Promise<string[]> {
  const { rows } = await t.pool.query(
    `SELECT position::text AS position FROM ${q}.seen s WHERE processor = $1 ORDER BY s.position`,
    [processor],
  );
  return rows.map((row) => row.position);
}

describe('poison events', () => {
  it("onPoison 'halt': stops at the event after the budget, keeps what came before, resumes after reset-failed", async () => {
    const stored = await appendOrders('halt', 25, 12);
    const poison = stored[12]!.position.toString();
    const [status] = await waitFor(
      'the processor to halt',
      async () => {
        const list = await t.app.processors.status('poison-halt');
        return list[0]?.state === 'failed' ? list : undefined;
      },
      60_000,
      () => processorState(t.pool, t.schema, 'poison-halt'),
    );
    assert.equal(status!.failedPosition, poison);
    assert.equal(status!.failingAttempts, 2);
    assert.match(status!.lastError ?? '', /cannot handle order 12/);
    const before = stored.slice(0, 12).map((event) => event.position.toString());
    assert.deepEqual(await seen('poison-halt'), before);
    // Isolation runs one event per page through the failed page's end, so the poison costs a
    // few failed pages, not one per event before it: no other event went through more than twice.
    const most = Math.max(
      ...stored.filter((_, n) => n !== 12).map((event) => handed.get(`poison-halt:${event.position}`) ?? 0),
    );
    assert.ok(most <= 2, `an event was handed to the pipeline ${most} times`);

    fixed = true;
    await t.app.processors.resetFailed('poison-halt');
    await waitFor(
      'the processor to finish',
      async () => (await seen('poison-halt')).length === 25,
      60_000,
      () => processorState(t.pool, t.schema, 'poison-halt'),
    );
    assert.deepEqual(
      await seen('poison-halt'),
      stored.map((event) => event.position.toString()),
    );
    fixed = false;
  });

  it("onPoison 'skip': dead-letters the event and moves on; every other event exactly once", async () => {
    const stored = await appendOrders('skip', 25, 7);
    await waitFor(
      'the processor to finish',
      async () => {
        const [status] = await t.app.processors.status('poison-skip');
        return status?.lagEvents === 0 && status.deadLetters === 1;
      },
      60_000,
      () => processorState(t.pool, t.schema, 'poison-skip'),
    );
    const want = stored.filter((_, n) => n !== 7).map((event) => event.position.toString());
    assert.deepEqual(await seen('poison-skip'), want);
    const { rows } = await t.pool.query(
      `SELECT position::text, error, attempts FROM ${q}.processor_dead_letters`,
    );
    assert.deepEqual(rows, [
      { position: stored[7]!.position.toString(), error: 'cannot handle order 7', attempts: 2 },
    ]);
  });

  it('pause holds a processor (state paused) and resume lets it catch up', async () => {
    await t.app.processors.pause('poison-skip');
    assert.equal((await t.app.processors.status('poison-skip'))[0]!.state, 'paused');
    const stored = await appendOrders('skip', 5, -1);
    await new Promise((resolve) => setTimeout(resolve, 300)); // give a trigger the chance to (wrongly) run it
    assert.equal((await t.app.processors.status('poison-skip'))[0]!.lagEvents, 5);
    await t.app.processors.resume('poison-skip');
    await waitFor(
      'the processor to catch up',
      async () => (await t.app.processors.status('poison-skip'))[0]!.lagEvents === 0,
    );
    const positions = await seen('poison-skip');
    for (const event of stored) assert.ok(positions.includes(event.position.toString()));
    const { rows } = await t.pool.query(
      `SELECT action FROM ${q}.audit_log WHERE subject = 'processor:poison-skip' ORDER BY id`,
    );
    assert.deepEqual(
      rows.map((row) => row.action),
      ['processors.pause', 'processors.resume'],
    );
  });

  it('rejects bad definitions with one clear line', () => {
    const noop = (events$: Observable<StoredEvent>) => events$;
    assert.throws(() => t.app.processor('x y', options('halt'), noop), /processor name "x y" is invalid/);
    assert.throws(
      () => t.app.processor('poison-halt', options('halt'), noop),
      /processor "poison-halt" is defined twice/,
    );
    assert.throws(
      () => t.app.processor('b', { ...options('halt'), batchSize: 0 }, noop),
      /processor "b": batchSize 0 is invalid: use a whole number from 1 to 10000/,
    );
    assert.throws(
      () => t.app.processor('c', { trigger: { cron: '99 * * * *' } }, noop),
      /schedule "processor:c": cron "99 \* \* \* \*" is invalid/,
    );
    assert.throws(
      () => t.app.processor('d', {} as ProcessorOptions, noop),
      /processor "d": trigger is required/,
    );
    assert.throws(
      () => t.app.processor('e', { ...options('halt'), onPoison: 'explode' as 'halt' }, noop),
      /processor "e": onPoison must be "halt" or "skip"/,
    );
  });

  it('outbatch processors list/status/pause/resume, and one line for an unknown processor', async () => {
    const list = await runCli(['processors', 'list', '--schema', t.schema, '--json']);
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(
      JSON.parse(list.stdout).map((p: { name: string }) => p.name),
      ['poison-halt', 'poison-skip'],
    );
    const human = await runCli(['processors', 'status', 'poison-skip', '--schema', t.schema]);
    assert.match(human.stdout, /poison-skip\s+1\*\s+idle/);
    const pause = await runCli(['processors', 'pause', 'poison-skip', '--schema', t.schema]);
    assert.equal(pause.code, 0, pause.stderr);
    assert.equal((await t.app.processors.status('poison-skip'))[0]!.state, 'paused');
    assert.equal((await runCli(['processors', 'resume', 'poison-skip', '--schema', t.schema])).code, 0);
    const unknown = await runCli(['processors', 'pause', 'nope', '--schema', t.schema]);
    assert.equal(unknown.code, 2);
    assert.equal(
      unknown.stderr.trim(),
      'outbatch: processor "nope" is unknown: it appears once a worker with it in its code has started',
    );
  });
});
