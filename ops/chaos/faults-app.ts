/**
 * The worker module of the fault test (`outbatch worker --app ops/chaos/faults-app.ts`):
 * the kill test's `chaos-tx` and `chaos-plain` (from app.ts), plus
 * - poison tasks, each throwing something a careless writer cannot store or describe: an
 *   Error with NUL characters in message and stack, a null-prototype object holding a
 *   BigInt, an Error of a few MB, lone UTF-16 surrogates;
 * - `locked-pair`: a first job that, on its first attempt, defers a partner with its own
 *   queueing lock and fails once the partner runs, which fails too: two failures with one
 *   queueing lock written at the same moment, both wanting to go back to `todo`;
 * - the processor `fault-copy`, which writes one row per event through the page's
 *   transaction into a table without a unique key, so a duplicate is counted, not refused.
 * Every poison and locked job is kept (`keepSucceededFor`) so the end state is read from the
 * jobs table itself.
 */
import { bulkWrite } from '../../src/index.js';
import { app, started } from './app.js';

const schema = app.schema;
const hugeBytes = Number(process.env.CHAOS_HUGE_BYTES ?? 3_000_000);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Dead-lettered quickly: the point is what the failure carries, not the waiting. */
const POISON = {
  retry: { attempts: 3, backoff: { initial: 50, factor: 1, jitter: 0 } },
  keepSucceededFor: { hours: 1 },
} as const;

// JSON.parse of an escaped NUL: how a NUL usually arrives, inside text from elsewhere.
const NUL = JSON.parse('"\\u0000"') as string;

app.task('poison-nul', POISON, async (_args: unknown, ctx) => {
  await started(ctx.job.id, ctx.job.attempt);
  throw new Error(`poison-nul: a${NUL}b from upstream ${NUL}`);
});

app.task('poison-bigint', POISON, async (_args: unknown, ctx) => {
  await started(ctx.job.id, ctx.job.attempt);
  // No prototype (no toString, so String() throws) and a BigInt (JSON.stringify throws).
  throw Object.assign(Object.create(null), { poison: 'bigint', n: 1n });
});

app.task('poison-huge', POISON, async (_args: unknown, ctx) => {
  await started(ctx.job.id, ctx.job.attempt);
  throw new Error(`poison-huge: ${'x'.repeat(hugeBytes)}`);
});

app.task('poison-surrogate', POISON, async (args: { n: number }, ctx) => {
  await started(ctx.job.id, ctx.job.attempt);
  // Half of them as an Error (message and stack), half as a bare string.
  if (args.n % 2 === 0) throw new Error('poison-surrogate: \ud800 lone high, lone low \udfff');
  throw 'poison-surrogate: \ud800';
});

/** Waits until job `id` has started (a `runs` row), at most `ms`. */
async function runStarted(id: string, ms: number): Promise<boolean> {
  const { pool } = await app.database();
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const { rowCount } = await pool.query(`SELECT 1 FROM "${schema}".runs WHERE job_id = $1`, [id]);
    if (rowCount) return true;
    await sleep(100);
  }
  return false;
}

// Attempts enough that the random faults never spend them: the pair's outcome is the test.
app.task(
  'locked-pair',
  { retry: { attempts: 10, backoff: { initial: 50, factor: 1, jitter: 0 } }, keepSucceededFor: { hours: 1 } },
  async (args: { pair: number; role: 'first' | 'second' }, ctx) => {
    await started(ctx.job.id, ctx.job.attempt);
    if (ctx.job.attempt === 1) {
      if (args.role === 'first') {
        // Through the pool, not the job's transaction (which this failure rolls back):
        // the partner is deferred while this job runs, so it is `todo` beside a `doing` one.
        const result = await app.defer(
          'locked-pair',
          { pair: args.pair, role: 'second' },
          { queueingLock: ctx.job.queueingLock ?? `pair-${args.pair}`, onConflict: 'ignore' },
        );
        await runStarted(result.enqueued ? result.id : result.existingId, 3_000);
      } else {
        await sleep(10);
      }
      throw new Error(
        `locked-pair ${args.pair} ${args.role}: fails on its first attempt, beside its partner`,
      );
    }
    const { pool } = await app.database();
    await pool.query(`INSERT INTO "${schema}".results (job_id, mode, pid) VALUES ($1, 'locked', $2)`, [
      ctx.job.id,
      process.pid,
    ]);
  },
);

app.processor(
  'fault-copy',
  {
    trigger: { onAppend: { debounce: { milliseconds: 50 } } },
    batchSize: 500,
    // Pages die under the proxy's faults: retry them, never halt (this is not a poison test).
    retry: { attempts: 1_000, backoff: { initial: { milliseconds: 100 }, factor: 1.5, max: { seconds: 2 } } },
  },
  (events$, ctx) =>
    events$.pipe(
      bulkWrite(
        ctx.tx,
        `INSERT INTO "${schema}".processed (position, pid) SELECT unnest($1::bigint[]), $2`,
        (events) => [events.map((event) => event.position.toString()), process.pid],
      ),
    ),
);

export { app };
