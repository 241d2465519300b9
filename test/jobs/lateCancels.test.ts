/**
 * Cancels a worker hears of late, or never (docs/lifecycle.md): the cancel's NOTIFY comes on
 * the LISTEN connection, a claim's reply on a control connection, and the NOTIFY can come
 * first; LISTEN can go silent. Found as a flaky test, then by a hostile review of the fix.
 * The fault proxy holds replies back; real workers; runs counted in a table.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type App, createApp } from '../../src/app.js';
import { type ClientMessage, type FaultRule, startFaultProxy } from '../faultProxy.js';
import { captureLog, databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { FAST, gate, waitFor, withRunningWorker } from './support.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('late_cancels');
  await t.pool.query(`CREATE TABLE "${t.schema}".runs (job text NOT NULL)`);
});
after(async () => t.cleanup());

const q = () => `"${t.schema}"`;
const recordRun = (jobId: string) => t.pool.query(`INSERT INTO ${q()}.runs VALUES ($1)`, [jobId]);
const runs = async (jobId: string) =>
  Number((await t.pool.query(`SELECT count(*) FROM ${q()}.runs WHERE job = $1`, [jobId])).rows[0].count);
const row = async (id: string) =>
  (await t.pool.query(`SELECT * FROM ${q()}.jobs WHERE id = $1`, [id])).rows[0] as
    | { status: string }
    | undefined;
const workers = async () => Number((await t.pool.query(`SELECT count(*) FROM ${q()}.workers`)).rows[0].count);

async function deferred(app: App, task: string): Promise<string> {
  const result = await app.defer(task, {});
  assert.ok(result.enqueued);
  return result.id;
}

/** Runs `app`'s worker around `body`, then stops it gracefully. */
const withWorker = (app: App, body: () => Promise<void>, options: Record<string, unknown> = {}) =>
  withRunningWorker(app, t.pool, t.schema, body, options);

/** A worker that hears of a cancel only by its NOTIFY: no beat, no poll within a test. */
const NO_BEAT = {
  stallTimeout: { minutes: 10 },
  heartbeatInterval: { minutes: 1 },
  pollInterval: { minutes: 10 },
};

/** A worker started without waiting in a body: stop() ends it and closes its app. */
function startWorker(app: App, options: Record<string, unknown>): { stop(): Promise<void> } {
  const controller = new AbortController();
  const done = app.run({ ...FAST, ...options, signal: controller.signal });
  return {
    async stop() {
      controller.abort();
      try {
        await done;
      } finally {
        await app.close();
      }
    },
  };
}

/** Every claim's reply held back 3 s, whichever claim takes the job (a start-up claim may still be in flight). */
const STALL_EVERY_CLAIM = {
  match: 'outbatch_claim',
  action: 'stall-reply',
  stallMs: 3_000,
  times: 1_000,
} as const satisfies FaultRule;

/** The question a worker asks about claims whose cancel came first (claimsNoLongerHeld), not the beat. */
const isRecheck = (m: ClientMessage) =>
  m.type === 'P' && m.text.includes('unnest($2::bigint[], $3::int[])') && m.text.includes('array_agg');

describe('a cancel the worker hears of late, or never', () => {
  // Found as a flaky test: the cancel's NOTIFY comes on the LISTEN connection, the claim's
  // reply on a control connection, and the NOTIFY can arrive first. It matched nothing then,
  // and the heartbeat asked only about running claims: the collected job was handed to the
  // handler with the batch's next job.
  it('a cancel whose NOTIFY overtakes the claim’s reply still drops the collected job', async () => {
    const proxy = await startFaultProxy(databaseUrl());
    const { log, lines } = captureLog();
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema, logger: log });
    app.task('bulk-overtaken', { batch: { size: 2, maxWait: { minutes: 1 } } }, async (jobs) => {
      for (const job of jobs) await recordRun(job.id);
    });
    try {
      // A long heartbeat interval: only the NOTIFY can bring this cancel in time.
      await withWorker(
        app,
        async () => {
          // Every claim's reply is held back 3 s, whichever claim takes the job (a start-up
          // claim may still be in flight): the job is cancelled while its claim's reply waits.
          const { fired } = proxy.addRule(STALL_EVERY_CLAIM);
          const first = await deferred(app, 'bulk-overtaken');
          await fired;
          await waitFor('the claim to commit', async () => (await row(first))?.status === 'doing');
          assert.deepEqual((await app.jobs.cancel([first])).done, [first]);
          await waitFor('the worker to drop the cancelled job', async () =>
            lines.some((line) => line.includes('job cancelled before it started')),
          );
          const second = await deferred(app, 'bulk-overtaken');
          const third = await deferred(app, 'bulk-overtaken');
          await waitFor(
            'the two later jobs to run',
            async () => (await runs(second)) + (await runs(third)) === 2,
          );
          assert.equal(await runs(first), 0, 'the cancelled job reached the handler');
          assert.equal((await row(first))!.status, 'cancelled');
        },
        NO_BEAT,
      );
    } finally {
      await proxy.close();
    }
  });

  it('a plain job whose cancel NOTIFY overtakes the claim’s reply never starts', async () => {
    const proxy = await startFaultProxy(databaseUrl());
    const { log, lines } = captureLog();
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema, logger: log });
    app.task('plain-overtaken', {}, async (_args, ctx) => {
      await recordRun(ctx.job.id);
    });
    try {
      await withWorker(
        app,
        async () => {
          const { fired } = proxy.addRule(STALL_EVERY_CLAIM);
          const first = await deferred(app, 'plain-overtaken');
          await fired;
          await waitFor('the claim to commit', async () => (await row(first))?.status === 'doing');
          assert.deepEqual((await app.jobs.cancel([first])).done, [first]);
          await waitFor('the worker to drop the cancelled job', async () =>
            lines.some((line) => line.includes('job cancelled before it started')),
          );
          const second = await deferred(app, 'plain-overtaken');
          await waitFor('the later job to run', async () => (await runs(second)) === 1);
          // Before the fix it started at once, and was aborted by a beat (here, none comes).
          assert.equal(await runs(first), 0, 'the cancelled job reached the handler');
          assert.equal((await row(first))!.status, 'cancelled');
        },
        NO_BEAT,
      );
    } finally {
      await proxy.close();
    }
  });

  it('a cancel whose NOTIFY never comes (LISTEN gone silent) is found by the heartbeat, collected job dropped', async () => {
    const proxy = await startFaultProxy(databaseUrl());
    const { log, lines } = captureLog();
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema, logger: log });
    app.task('bulk-unheard', { batch: { size: 2, maxWait: { minutes: 1 } } }, async (jobs) => {
      for (const job of jobs) await recordRun(job.id);
    });
    try {
      await withWorker(
        app,
        async () => {
          const first = await deferred(app, 'bulk-unheard');
          await waitFor('the first job to be claimed', async () => (await row(first))?.status === 'doing');
          assert.ok(proxy.halfOpen((c) => c.applicationName === 'outbatch-listen') > 0);
          assert.deepEqual((await app.jobs.cancel([first])).done, [first]);
          await waitFor('the heartbeat to find the cancel', async () =>
            lines.some((line) => line.includes('job cancelled before it started')),
          );
          const second = await deferred(app, 'bulk-unheard');
          const third = await deferred(app, 'bulk-unheard');
          await waitFor(
            'the two later jobs to run',
            async () => (await runs(second)) + (await runs(third)) === 2,
          );
          assert.equal(await runs(first), 0, 'the cancelled job reached the handler');
        },
        { heartbeatInterval: 200, pollInterval: 200 },
      );
    } finally {
      await proxy.close();
    }
  });
});

describe('claims held back while the database is asked whether they were cancelled', () => {
  it('a cancel whose NOTIFY comes while the question is on its way is not lost: the job never starts', async () => {
    // W2 (direct) runs X first: X's cancel leaves "X:1" remembered in W1, matching nothing.
    const app2 = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    const w2Started = gate();
    app2.task('asked-late', {}, async (_args, ctx) => {
      w2Started.open();
      await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
    });
    const proxy = await startFaultProxy(databaseUrl());
    const { log, lines } = captureLog('debug');
    const app1 = createApp({ databaseUrl: proxy.url, schema: t.schema, logger: log });
    app1.task('asked-late', {}, async (_args, ctx) => {
      await recordRun(ctx.job.id);
    });
    const w2 = startWorker(app2, {});
    let w1: { stop(): Promise<void> } | undefined;
    try {
      await waitFor('W2 to register', async () => (await workers()) === 1);
      const x = await deferred(app2, 'asked-late');
      await w2Started.opened;
      w1 = startWorker(app1, NO_BEAT);
      await waitFor('W1 to register', async () => (await workers()) === 2);
      await waitFor('both workers to LISTEN to cancels', async () => {
        const { rows } = await t.pool.query(
          `SELECT 1 FROM pg_stat_activity WHERE application_name = 'outbatch-listen'
           AND query = $1 AND state = 'idle'`,
          [`LISTEN "${t.schema}_cancel"`],
        );
        return rows.length === 2;
      });
      await app2.jobs.cancel([x]);
      await waitFor('W1 to remember the cancel', async () =>
        lines.some((line) => line.includes('a cancel matched no claim held here')),
      );
      await w2.stop();
      // Every question's reply is held back; `jobs retry` starts X's attempts over, so W1
      // claims "X:1" again and holds it back to ask.
      const { fired } = proxy.addRule({
        match: isRecheck,
        action: 'stall-reply',
        stallMs: 3_000,
        times: 1_000,
      });
      await app1.jobs.retry({ ids: [x] });
      await fired;
      await waitFor('the question to be answered on the server', async () => {
        const { rows } = await t.pool.query(
          `SELECT 1 FROM pg_stat_activity WHERE application_name = 'outbatch-control' AND state = 'idle'
           AND query LIKE '%unnest($2::bigint[], $3::int[])%' AND query LIKE $1`,
          [`%${q()}.jobs%`],
        );
        return rows.length > 0;
      });
      // The new run is cancelled after the answer ("not cancelled") left the server, before it arrives.
      const operator = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
      assert.deepEqual((await operator.jobs.cancel([x])).done, [x]);
      await operator.close();
      await waitFor('W1 to drop the job', async () =>
        lines.some((line) => line.includes('job cancelled before it started')),
      );
      assert.equal(
        await runs(x),
        0,
        'the cancelled claim was started: its NOTIFY came while it was asked about',
      );
      assert.equal((await row(x))!.status, 'cancelled');
    } finally {
      await w1?.stop();
      await w2.stop().catch(() => {});
      await proxy.close();
    }
  });

  it('a claim held back cannot be run beside a retry of its job: the retry waits until it is let go', async () => {
    const proxy = await startFaultProxy(databaseUrl());
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema });
    const started = gate();
    const finish = gate();
    app.task('retried-while-asked', {}, async (_args, ctx) => {
      await recordRun(ctx.job.id);
      started.open();
      await finish.opened;
    });
    try {
      await withWorker(
        app,
        async () => {
          const { fired: claimHeld } = proxy.addRule(STALL_EVERY_CLAIM);
          const asked = proxy.addRule({ match: isRecheck, action: 'stall-reply', stallMs: 4_000 });
          const x = await deferred(app, 'retried-while-asked');
          await claimHeld;
          await waitFor('the claim to commit', async () => (await row(x))?.status === 'doing');
          // The NOTIFY overtakes the claim's reply: the claim is held back and asked about.
          assert.deepEqual((await app.jobs.cancel([x])).done, [x]);
          await asked.fired;
          // While the answer is held, the operator retries X. Were it claimed again as "X:1"
          // (attempts start over), the worker could not tell the held claim from the new one:
          // both ran (found by review). The retry waits for the held claim to be let go.
          const early = await app.jobs.retry({ ids: [x] });
          assert.deepEqual(early.done, []);
          assert.match(early.skipped[0]?.reason ?? '', /has not stopped yet on worker/);
          await waitFor(
            'the held claim to be dropped and let go',
            async () =>
              (await t.pool.query(`SELECT 1 FROM ${q()}.abandoned_runs WHERE job_id = $1`, [x])).rowCount ===
              0,
          );
          assert.equal(await runs(x), 0, 'the cancelled claim was started');
          assert.deepEqual((await app.jobs.retry({ ids: [x] })).done, [x]);
          await started.opened;
          await waitFor('a second run', async () => (await runs(x)) >= 2, 3_000).catch(() => {});
          assert.equal(await runs(x), 1, 'the job ran twice');
          finish.open();
        },
        NO_BEAT,
      );
    } finally {
      finish.open();
      await proxy.close();
    }
  });

  it('a question whose connection is cut: the held claim is not lost, and the cancel still wins (by the beat)', async () => {
    const proxy = await startFaultProxy(databaseUrl());
    const { log, lines } = captureLog();
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema, logger: log });
    const aborted = gate();
    app.task('asked-cut', {}, async (_args, ctx) => {
      await recordRun(ctx.job.id);
      await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
      aborted.open();
    });
    try {
      await withWorker(
        app,
        async () => {
          const { fired: claimHeld } = proxy.addRule(STALL_EVERY_CLAIM);
          const asked = proxy.addRule({ match: isRecheck, action: 'cut' });
          const x = await deferred(app, 'asked-cut');
          await claimHeld;
          await waitFor('the claim to commit', async () => (await row(x))?.status === 'doing');
          assert.deepEqual((await app.jobs.cancel([x])).done, [x]);
          await asked.fired;
          // Not answered, the claim starts and the next beat finds it cancelled and aborts it;
          // or a beat asks about the held claim first, and it is asked about again and dropped.
          await Promise.race([
            aborted.opened,
            waitFor('the held claim to be dropped', async () =>
              lines.some((line) => line.includes('job cancelled before it started')),
            ),
          ]);
          assert.ok((await runs(x)) <= 1);
          assert.equal((await row(x))!.status, 'cancelled');
          await waitFor(
            'its abandoned run to be released',
            async () => (await t.pool.query(`SELECT 1 FROM ${q()}.abandoned_runs`)).rowCount === 0,
          );
          const y = await deferred(app, 'asked-cut');
          await waitFor('a later job to run', async () => (await runs(y)) === 1);
          assert.deepEqual((await app.jobs.cancel([y])).done, [y]);
        },
        { stallTimeout: { minutes: 10 }, heartbeatInterval: 300, pollInterval: { minutes: 10 } },
      );
    } finally {
      await proxy.close();
    }
  });
});
