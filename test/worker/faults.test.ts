/**
 * Single faults that once stranded or repeated work (issue: no stranded work under any
 * single fault): a refused outcome, a lost claim reply, a lost COMMIT reply, handlers
 * holding every connection, an unknown task, an odd thrown value, a heartbeat racing
 * shutdown, stale heartbeats after an outage. Each checks by counting runs and rows.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type App, createApp } from '../../src/app.js';
import { claimJobs } from '../../src/jobs/claim.js';
import { completeJobs } from '../../src/jobs/complete.js';
import { recoverStalledJobs } from '../../src/jobs/recover.js';
import { type FaultProxy, startFaultProxy } from '../faultProxy.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { FAST, gate, waitFor, withRunningWorker } from '../jobs/support.js';

let t: TestApp;
before(async () => {
  t = await isolatedApp('worker_faults');
  await t.pool.query(`CREATE TABLE "${t.schema}".runs (job text NOT NULL, label text)`);
  await t.pool.query(`CREATE TABLE "${t.schema}".effects (job text NOT NULL)`);
});
after(async () => t.cleanup());

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A handler's first line: one row per run, written outside any job transaction. */
const recordRun = (jobId: string, label = '') =>
  t.pool.query(`INSERT INTO "${t.schema}".runs VALUES ($1, $2)`, [jobId, label]);
const runsOf = async (jobId: string) =>
  Number(
    (await t.pool.query(`SELECT count(*) FROM "${t.schema}".runs WHERE job = $1`, [jobId])).rows[0].count,
  );
const row = async (id: string) =>
  (await t.pool.query(`SELECT * FROM "${t.schema}".jobs WHERE id = $1`, [id])).rows[0] as
    | { status: string; attempts: number; last_error: { message: string; stack?: string } | null }
    | undefined;

/** Runs `app`'s worker around `body`, then stops it gracefully. */
const withWorker = (app: App, body: () => Promise<void>, options: Record<string, unknown> = {}) =>
  withRunningWorker(app, t.pool, t.schema, body, options);

const newApp = (url = databaseUrl(), options: Record<string, unknown> = {}) =>
  createApp({ databaseUrl: url, schema: t.schema, ...options });

async function deferred(app: App, task: string, args: unknown = {}, options = {}): Promise<string> {
  const result = await app.defer(task, args, options);
  assert.ok(result.enqueued);
  return result.id;
}

describe('a refused outcome is isolated', () => {
  it('two running jobs of one queueing lock failing together: newest back to todo, other superseded; a success beside them is written', async () => {
    const app = newApp();
    const release = gate();
    app.task(
      'shared-ql',
      { retry: { attempts: 3, backoff: { initial: { seconds: 60 } } } },
      async (_a, ctx) => {
        await recordRun(ctx.job.id);
        await release.opened;
        throw new Error('both fail');
      },
    );
    app.task('bystander', { keepSucceededFor: { minutes: 5 } }, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      await release.opened;
    });
    await withWorker(
      app,
      async () => {
        const older = await deferred(app, 'shared-ql', {}, { queueingLock: 'ql-1' });
        await waitFor('the first job to run', async () => (await runsOf(older)) === 1);
        // Allowed: the first one is doing, not todo.
        const newer = await deferred(app, 'shared-ql', {}, { queueingLock: 'ql-1' });
        const bystander = await deferred(app, 'bystander');
        await waitFor(
          'all three to run',
          async () => (await runsOf(newer)) === 1 && (await runsOf(bystander)) === 1,
        );
        release.open();
        await waitFor(
          'the bystander to be recorded',
          async () => (await row(bystander))?.status === 'succeeded',
        );
        await waitFor('the newest to be back in todo', async () => (await row(newer))?.status === 'todo');
        const superseded = (await row(older))!;
        assert.equal(superseded.status, 'failed');
        assert.match(superseded.last_error!.message, new RegExp(`superseded by job ${newer}`));
      },
      { concurrency: 4 },
    );
  });

  it('running jobs of one queueing lock returned at shutdown: the newest goes back, the others are superseded', async () => {
    const app = newApp();
    const started = gate();
    let count = 0;
    app.task('held-at-stop', {}, async (_a, ctx) => {
      if (++count === 2) started.open();
      await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
      throw new Error('stopped');
    });
    let older = '';
    let newer = '';
    await withWorker(
      app,
      async () => {
        older = await deferred(app, 'held-at-stop', {}, { queueingLock: 'ql-stop' });
        await waitFor('the first job to run', async () => count === 1);
        newer = await deferred(app, 'held-at-stop', {}, { queueingLock: 'ql-stop' });
        await started.opened;
      },
      { concurrency: 4 },
    );
    assert.equal((await row(newer))?.status, 'todo');
    assert.equal((await row(newer))?.attempts, 0, 'returned uncounted');
    assert.equal((await row(older))?.status, 'failed');
    await t.pool.query(`DELETE FROM "${t.schema}".jobs WHERE id = ANY ($1::bigint[])`, [[older, newer]]);
  });

  it('errors jsonb cannot hold (NUL, lone surrogates), huge ones, and odd thrown values are stored; the worker goes on', async () => {
    const app = newApp();
    const oddValue = Object.assign(Object.create(null), { n: 1n });
    const throwingGetter = new Error('hidden');
    Object.defineProperty(throwingGetter, 'message', {
      get() {
        throw new Error('no message for you');
      },
    });
    const thrown: Record<string, () => unknown> = {
      nul: () => new Error('bad \u0000 byte'),
      surrogate: () => new Error('lone \ud800 surrogate'),
      huge: () => new Error('x'.repeat(5_000_000)),
      parse: () => {
        try {
          JSON.parse('{"a": "\u0000"}');
        } catch (error) {
          return error;
        }
      },
      bigint: () => oddValue,
      getter: () => throwingGetter,
    };
    app.task('poison', { retry: { attempts: 1 } }, async (args: { kind: string }) => {
      throw thrown[args.kind]!();
    });
    app.task('fine', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
    });
    await withWorker(app, async () => {
      const ids: Record<string, string> = {};
      for (const kind of Object.keys(thrown)) ids[kind] = await deferred(app, 'poison', { kind });
      const fine = await deferred(app, 'fine');
      for (const [kind, id] of Object.entries(ids)) {
        await waitFor(
          `the ${kind} job to be dead-lettered`,
          async () => (await row(id))?.status === 'failed',
        );
      }
      await waitFor('the healthy job', async () => (await row(fine)) === undefined);
      assert.equal(await runsOf(fine), 1);
      const message = async (kind: string) => (await row(ids[kind]!))!.last_error!.message;
      assert.equal(await message('nul'), 'bad \ufffd byte');
      assert.equal(await message('surrogate'), 'lone \ufffd surrogate');
      assert.ok((await message('huge')).length < 3_000);
      assert.match(await message('huge'), /more characters\)$/);
      assert.match(await message('bigint'), /^handler threw a non-Error: /);
      assert.ok(await message('getter'));
    });
  });

  it('an outcome the server refuses even alone is recorded as a failure that says so; the rest are written', async () => {
    // A trigger stands in for whatever makes the server refuse one job's outcome.
    const s = `"${t.schema}"`;
    await t.pool.query(`
      CREATE FUNCTION ${s}.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF TG_OP = 'DELETE' AND OLD.args ->> 'refuse' = 'success' THEN
          RAISE EXCEPTION 'this success is refused';
        END IF;
        IF TG_OP = 'UPDATE' AND NEW.last_error ->> 'message' LIKE 'refuse me%' THEN
          RAISE EXCEPTION 'this failure is refused';
        END IF;
        RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
      END $$;
      CREATE TRIGGER refuse_poison BEFORE UPDATE OR DELETE ON ${s}.jobs
      FOR EACH ROW EXECUTE FUNCTION ${s}.refuse_poison();`);
    try {
      const app = newApp();
      const release = gate();
      app.task('refusable', { retry: { attempts: 1 } }, async (args: { refuse?: string }, ctx) => {
        await recordRun(ctx.job.id);
        await release.opened;
        if (args.refuse === 'failure') throw new Error('refuse me, please');
      });
      await withWorker(
        app,
        async () => {
          const refusedSuccess = await deferred(app, 'refusable', { refuse: 'success' });
          const refusedFailure = await deferred(app, 'refusable', { refuse: 'failure' });
          const plain = await Promise.all([1, 2, 3].map(() => deferred(app, 'refusable', {})));
          await waitFor('all five to run', async () => {
            const { rows } = await t.pool.query(
              `SELECT count(DISTINCT job)::int AS n FROM ${s}.runs WHERE job = ANY ($1)`,
              [[refusedSuccess, refusedFailure, ...plain]],
            );
            return rows[0].n === 5;
          });
          release.open();
          for (const id of plain)
            await waitFor(`job ${id} to complete`, async () => (await row(id)) === undefined);
          await waitFor('the refused success', async () => (await row(refusedSuccess))?.status === 'failed');
          await waitFor('the refused failure', async () => (await row(refusedFailure))?.status === 'failed');
          assert.match(
            (await row(refusedSuccess))!.last_error!.message,
            /^outcome could not be recorded \(success\)/,
          );
          assert.match(
            (await row(refusedFailure))!.last_error!.message,
            /^outcome could not be recorded \(failure\)/,
          );
        },
        { concurrency: 5 },
      );
    } finally {
      await t.pool.query(`DROP TRIGGER refuse_poison ON ${s}.jobs; DROP FUNCTION ${s}.refuse_poison()`);
    }
  });
});

describe('lost replies', () => {
  let proxy: FaultProxy;
  before(async () => {
    proxy = await startFaultProxy(databaseUrl());
  });
  after(async () => proxy.close());

  it('a claim whose reply is lost: the job goes back to todo uncounted and runs once', async () => {
    const app = newApp(proxy.url);
    app.task('orphan', { keepSucceededFor: { minutes: 5 } }, async (_a, ctx) => {
      await recordRun(ctx.job.id);
    });
    // Armed before the worker starts: its first claim is the one that takes the job.
    const { fired } = proxy.addRule({ match: 'outbatch_claim', action: 'lose-reply' });
    const id = await deferred(app, 'orphan', {}, { lock: 'orphan-lock' });
    const follower = await deferred(app, 'orphan', {}, { lock: 'orphan-lock' });
    await withWorker(app, async () => {
      await fired;
      await waitFor('both to run', async () => (await row(follower))?.status === 'succeeded');
      assert.equal((await row(id))?.status, 'succeeded');
      assert.equal(await runsOf(id), 1);
      assert.equal(await runsOf(follower), 1);
      assert.equal((await row(id))?.attempts, 1, 'the lost claim is not counted');
    });
  });

  it('a claim whose reply is lost just before a graceful stop: the job goes back to todo uncounted, not to recovery', async () => {
    // Found by review: the stop came before the next claim's reconcile, and a peer's
    // recovery then counted the attempt — a job of one attempt was dead-lettered unrun.
    const app = newApp(proxy.url);
    app.task('stop-orphan', { retry: { attempts: 1 } }, async (_a, ctx) => {
      await recordRun(ctx.job.id);
    });
    // The job is queued before the worker starts, so the first claim is the one whose reply
    // is lost. Armed while a running worker polled, the rule could fire on an empty claim
    // just before the defer committed, and the next claim ran the job before the stop (seen
    // once in the version matrix).
    const id = await deferred(app, 'stop-orphan');
    const { fired } = proxy.addRule({ match: 'outbatch_claim', action: 'lose-reply' });
    const controller = new AbortController();
    const running = app.run({ ...FAST, signal: controller.signal });
    await fired;
    controller.abort();
    await running;
    await app.close();
    const left = await row(id);
    assert.equal(left?.status, 'todo');
    assert.equal(left?.attempts, 0, 'the claim that never ran is not counted');
    assert.equal(await runsOf(id), 0);
    const next = newApp();
    next.task('stop-orphan', { retry: { attempts: 1 } }, async (_a, ctx) => {
      await recordRun(ctx.job.id);
    });
    await withWorker(next, async () => {
      await waitFor('it runs', async () => (await row(id)) === undefined);
      assert.equal(await runsOf(id), 1);
    });
  });

  it('a ctx.tx job whose COMMIT reply is lost: its effect is written once and it is not run again', async () => {
    const app = newApp(proxy.url);
    app.task('committing', { transaction: true, keepSucceededFor: { minutes: 5 } }, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      await ctx.tx!.query(`INSERT INTO "${t.schema}".effects VALUES ($1)`, [ctx.job.id]);
    });
    await withWorker(app, async () => {
      const { fired } = proxy.addRule({ match: /^COMMIT/, action: 'lose-reply' });
      const id = await deferred(app, 'committing');
      await fired;
      await sleep(500); // a wrong re-run would start within the poll interval
      await waitFor('the job to be settled', async () => (await row(id))?.status === 'succeeded');
      const effects = await t.pool.query(
        `SELECT count(*)::int AS n FROM "${t.schema}".effects WHERE job = $1`,
        [id],
      );
      assert.equal(effects.rows[0].n, 1);
      assert.equal(await runsOf(id), 1);
    });
  });
});

describe('connections', () => {
  it('handlers holding every handler connection past the stall timeout: the heartbeat goes on, each job starts once', async () => {
    const hold = 2_500;
    const stall = { stallTimeout: 1_000, heartbeatInterval: 150, recoverInterval: 100, concurrency: 3 };
    const apps = [newApp(databaseUrl(), { pool: { max: 3 } }), newApp(databaseUrl(), { pool: { max: 3 } })];
    for (const app of apps) {
      app.task('hog', { transaction: true }, async (_a, ctx) => {
        await recordRun(ctx.job.id);
        await sleep(hold);
      });
    }
    const ids = await Promise.all(Array.from({ length: 6 }, () => deferred(apps[0]!, 'hog')));
    const controller = new AbortController();
    const runs = apps.map((app) => app.run({ ...FAST, ...stall, signal: controller.signal }));
    try {
      for (const id of ids)
        await waitFor(`job ${id} to finish`, async () => (await row(id)) === undefined, 30_000);
    } finally {
      controller.abort();
      await Promise.all(runs);
      await Promise.all(apps.map((app) => app.close()));
    }
    for (const id of ids) assert.equal(await runsOf(id), 1, `job ${id} started more than once`);
  });
});

describe('start-up', () => {
  it('a worker whose first connections are cut while it connects comes up and runs jobs', async () => {
    // Found by ops/chaos/faults.ts: a worker started during faults exited 1 with "cannot
    // connect to PostgreSQL … Connection terminated unexpectedly" — opening the database was
    // not retried, and the app kept that first failure for every later call.
    const proxy = await startFaultProxy(databaseUrl());
    const app = newApp(proxy.url);
    app.task('after-cuts', {}, async (_args, ctx) => {
      await recordRun(ctx.job.id, 'after-cuts');
    });
    try {
      const { fired } = proxy.addRule({ match: 'pg_backend_pid', action: 'cut', times: 2 });
      await withWorker(app, async () => {
        await fired;
        const id = await deferred(app, 'after-cuts');
        await waitFor('the job to be done', async () => (await row(id)) === undefined);
        assert.equal(await runsOf(id), 1);
      });
      assert.equal(proxy.injected.cut, 2, 'both connection checks were cut');
    } finally {
      await proxy.close();
    }
  });

  it('a run aborted while start-up retries through a dead connection ends at once, quietly', async () => {
    // Found by review: start-up retried connection trouble for up to a minute whatever the
    // run's signal said, so a stop asked for during an outage waited out the whole minute.
    const proxy = await startFaultProxy(databaseUrl());
    const app = newApp(proxy.url);
    app.task('never', {}, async () => {});
    try {
      await app.database(); // opened before the outage
      const { fired } = proxy.addRule({
        match: (m) => m.connection.applicationName === 'outbatch-control',
        action: 'cut',
        times: 10_000,
      });
      const controller = new AbortController();
      const run = app.run({ ...FAST, signal: controller.signal });
      await fired; // registering the worker failed at least once: it is retrying
      controller.abort();
      const ended = await Promise.race([run.then(() => 'ended'), sleep(20_000).then(() => 'still retrying')]);
      assert.equal(ended, 'ended', 'the run did not end on its signal (start-up retries for 60 s)');
    } finally {
      await app.close();
      await proxy.close();
    }
  });
});

describe('workers and tasks', () => {
  it('a worker claims only the tasks it knows; the job waits for a worker that knows it', async () => {
    const old = newApp();
    old.task('known', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
    });
    const newer = await deferred(old, 'brand-new-task');
    const known = await deferred(old, 'known');
    await withWorker(old, async () => {
      await waitFor('the known job', async () => (await row(known)) === undefined);
      await sleep(300);
      assert.deepEqual(
        { status: (await row(newer))?.status, attempts: (await row(newer))?.attempts },
        { status: 'todo', attempts: 0 },
      );
    });
    const upgraded = newApp();
    upgraded.task('brand-new-task', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
    });
    await withWorker(upgraded, async () => {
      await waitFor('the new task to run', async () => (await row(newer)) === undefined);
    });
    assert.equal(await runsOf(newer), 1);
  });

  it('a busy worker gives a job of a task it does not know back at once, not when its slot frees', async () => {
    // Found by review: the job sat in the buffer, `doing` with its lock held, until the
    // running job ended (and a SIGKILL then counted an attempt it never had).
    const old = newApp();
    const busy = gate();
    old.task('busy-old', {}, async (args: { wait?: boolean }) => {
      if (args.wait) await busy.opened;
    });
    await withWorker(
      old,
      async () => {
        // Quick jobs first: the worker then prefetches (claims beyond its free slot).
        const quick = await Promise.all([1, 2, 3].map(() => deferred(old, 'busy-old')));
        await waitFor('the quick jobs', async () => (await Promise.all(quick.map(row))).every((r) => !r));
        const running = await deferred(old, 'busy-old', { wait: true });
        await waitFor('the old worker to be busy', async () => (await row(running))?.status === 'doing');
        const foreign = await deferred(old, 'unknown-to-old', {}, { lock: 'foreign-lock' });
        await sleep(500); // several polls of a worker that has room in its buffer
        const state = (
          await t.pool.query(`SELECT status, attempts, worker_id FROM "${t.schema}".jobs WHERE id = $1`, [
            foreign,
          ])
        ).rows[0];
        assert.deepEqual(state, { status: 'todo', attempts: 0, worker_id: null });
        await t.pool.query(`DELETE FROM "${t.schema}".jobs WHERE id = $1`, [foreign]); // no worker will run it
        busy.open();
      },
      { concurrency: 1, pollInterval: 50 },
    );
  });

  it('a worker never claims a job of a task another worker registered and it does not know', async () => {
    await t.pool.query(
      `INSERT INTO "${t.schema}".tasks (name, queue, priority, max_attempts, on_stall)
       VALUES ('registered-elsewhere', 'default', 0, 5, 'retry') ON CONFLICT DO NOTHING`,
    );
    const old = newApp();
    old.task('old-only', {}, async () => {});
    const elsewhere = await deferred(old, 'registered-elsewhere');
    await withWorker(old, async () => {
      await sleep(300);
      const state = (
        await t.pool.query(
          `SELECT status, attempts, updated_at = created_at AS untouched FROM "${t.schema}".jobs WHERE id = $1`,
          [elsewhere],
        )
      ).rows[0];
      assert.deepEqual(state, { status: 'todo', attempts: 0, untouched: true });
    });
    await t.pool.query(`DELETE FROM "${t.schema}".jobs WHERE id = $1`, [elsewhere]); // no worker will run it
  });

  it('a heartbeat in flight at shutdown never registers the stopped worker again', async () => {
    for (let round = 0; round < 15; round++) {
      const app = newApp();
      app.task('idle', {}, async () => {});
      const controller = new AbortController();
      const running = app.run({ ...FAST, stallTimeout: 60, heartbeatInterval: 2, signal: controller.signal });
      await waitFor(
        'the worker to register',
        async () => (await t.pool.query(`SELECT 1 FROM "${t.schema}".workers`)).rowCount,
      );
      await sleep(Math.random() * 20);
      controller.abort();
      await running;
      await app.close();
      await sleep(30);
      const ghosts = await t.pool.query(`SELECT id FROM "${t.schema}".workers`);
      assert.equal(
        ghosts.rowCount,
        0,
        `round ${round}: a stopped worker is registered: ${JSON.stringify(ghosts.rows)}`,
      );
    }
  });

  it('after an outage, a worker back first does not take the running jobs of one whose heartbeat is merely stale', async () => {
    const slow = newApp();
    const release = gate();
    slow.task('long', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      await release.opened;
    });
    // The slow worker beats every 1.5 s: after the outage its next beat is up to 1.5 s away.
    const stall = { stallTimeout: 2_000, heartbeatInterval: 200, recoverInterval: 100 };
    const controller = new AbortController();
    const slowRun = slow.run({ ...FAST, ...stall, heartbeatInterval: 1_500, signal: controller.signal });
    const fresh = newApp();
    fresh.task('long', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
    });
    let freshRun: Promise<void> | undefined;
    try {
      const id = await deferred(slow, 'long');
      await waitFor('the job to start', async () => (await runsOf(id)) === 1);
      // The outage, as the database saw it: the running worker's last beat is long ago.
      await t.pool.query(`UPDATE "${t.schema}".workers SET last_seen_at = now() - interval '1 hour'`);
      freshRun = fresh.run({ ...FAST, ...stall, signal: controller.signal });
      await sleep(1_000); // the fresh worker's first passes, and the slow worker's next beats
      assert.equal((await row(id))?.status, 'doing');
      release.open();
      await waitFor('the job to finish', async () => (await row(id)) === undefined);
      assert.equal(await runsOf(id), 1);
    } finally {
      release.open();
      controller.abort();
      await Promise.all([slowRun, freshRun]);
      await Promise.all([slow.close(), fresh.close()]);
    }
  });
});

describe('found by review', () => {
  it('a claim whose connection goes half-open after the server committed it: abandoned at its deadline, reconciled, run once', async () => {
    const proxy = await startFaultProxy(databaseUrl());
    try {
      const app = newApp(proxy.url);
      app.task('half-open-claim', {}, async (_a, ctx) => {
        await recordRun(ctx.job.id);
      });
      // The whole claim (Parse/Bind/Execute/Sync) reaches the server; the connection then
      // goes silent without closing, so the reply never comes.
      const claiming = new Set<number>();
      const { fired } = proxy.addRule({
        match: (m) => {
          if (m.text.includes('outbatch_claim')) claiming.add(m.connection.id);
          return m.type === 'S' && claiming.has(m.connection.id);
        },
        action: 'half-open',
      });
      const id = await deferred(app, 'half-open-claim');
      await withWorker(
        app,
        async () => {
          await fired;
          await waitFor('the job to run', async () => (await row(id)) === undefined);
          const later = await deferred(app, 'half-open-claim');
          await waitFor('a later job to run', async () => (await row(later)) === undefined);
          assert.equal(await runsOf(id), 1);
        },
        { stallTimeout: 1_500, heartbeatInterval: 100 },
      );
    } finally {
      await proxy.close();
    }
  });

  it("a job recovered away and claimed again by the same worker: the old run's outcome does not settle the new claim", async () => {
    const app = newApp();
    const first = gate();
    const second = gate();
    app.task('reclaimed', { retry: { attempts: 5, backoff: { initial: 10 } } }, async (_a, ctx) => {
      await recordRun(ctx.job.id, `attempt ${ctx.job.attempt}`);
      if (ctx.job.attempt === 1) {
        await first.opened;
        throw new Error('the old run fails late');
      }
      await second.opened;
    });
    await withWorker(
      app,
      async () => {
        const id = await deferred(app, 'reclaimed');
        await waitFor('the first run', async () => (await runsOf(id)) === 1);
        // The worker looked dead for a moment (a GC pause): a peer's recovery takes the job.
        const client = await t.pool.connect();
        try {
          await client.query('BEGIN');
          await client.query(`UPDATE "${t.schema}".workers SET last_seen_at = now() - interval '2 hours'`);
          await recoverStalledJobs(client, t.schema, null);
          await client.query('COMMIT');
        } finally {
          client.release();
        }
        await waitFor('the same worker to claim it again', async () => (await runsOf(id)) === 2);
        first.open();
        await sleep(500); // the old run's failure is written meanwhile
        assert.equal((await row(id))?.status, 'doing', 'the new claim is still running');
        assert.equal(await runsOf(id), 2);
        second.open();
        await waitFor('the new claim to complete', async () => (await row(id)) === undefined);
        assert.equal(await runsOf(id), 2);
      },
      { concurrency: 4 },
    );
  });

  it('a batched completion of an earlier claim, arriving late, settles neither the newer claim nor its lock', async () => {
    // The old run's completion was retried through connection trouble while a peer
    // recovered the job and this same worker claimed it again (found by review: the late
    // write deleted the row under the running attempt 2, freed its lock for the next job,
    // and attempt 2's failure then found no row).
    const app = newApp();
    app.task('late-completion', {}, async () => {});
    const id = await deferred(app, 'late-completion', {}, { lock: 'late-lock' });
    const claim = { skipTasks: [], queues: null, limit: 1, workerId: 'w-late', now: null };
    const [first] = await claimJobs(t.pool, t.schema, claim);
    assert.equal(first?.attempts, 1);
    await t.pool.query(`UPDATE "${t.schema}".jobs SET status = 'todo', worker_id = NULL WHERE id = $1`, [id]);
    const [second] = await claimJobs(t.pool, t.schema, claim);
    assert.equal(second?.attempts, 2);
    const completion = { id, task: 'late-completion', durationMs: 1, keepForMs: null };
    for (const keepForMs of [null, 60_000]) {
      const late = await completeJobs(
        t.pool,
        t.schema,
        'w-late',
        [{ ...completion, keepForMs, attempt: 1 }],
        null,
      );
      assert.equal(late, 0);
      assert.equal((await row(id))?.status, 'doing', 'the newer claim still holds the job (and its lock)');
    }
    assert.equal(await completeJobs(t.pool, t.schema, 'w-late', [{ ...completion, attempt: 2 }], null), 1);
    assert.equal(await row(id), undefined);
    await app.close();
  });

  it('one heartbeat gone half-open with a 1 s stall timeout: a peer does not take the live worker for dead', async () => {
    // Found by review: beats shared the control statements' 2 s deadline floor, so a hung
    // beat outlived the stall timeout and a peer recovered the running job (run 3 times).
    const proxy = await startFaultProxy(databaseUrl());
    const peer = newApp();
    peer.task('long-beat', {}, async () => {});
    const peerStop = new AbortController();
    const options = { pollInterval: 100, stallTimeout: 1_000, heartbeatInterval: 150, recoverInterval: 100 };
    // The peer only judges: it takes no job of the default queue.
    const peerRun = peer.run({ ...options, queues: ['elsewhere'], signal: peerStop.signal });
    try {
      await sleep(1_200); // the peer has beaten for a whole stall window
      const app = newApp(proxy.url);
      let started = 0;
      app.task('long-beat', {}, async (_a, ctx) => {
        await recordRun(ctx.job.id);
        started += 1;
        await sleep(3_000);
      });
      await withWorker(
        app,
        async () => {
          const id = await deferred(app, 'long-beat');
          await waitFor('it starts', async () => started === 1);
          const { fired } = proxy.addRule({
            match: (m) =>
              m.connection.applicationName === 'outbatch-control' && m.text.includes('SET last_seen_at'),
            action: 'half-open',
          });
          await fired;
          await waitFor('it completes', async () => (await row(id)) === undefined, 15_000);
          assert.equal(await runsOf(id), 1);
        },
        options,
      );
    } finally {
      peerStop.abort();
      try {
        await peerRun;
      } finally {
        // Always: a proxy left listening keeps the file's process alive.
        await peer.close();
        await proxy.close();
      }
    }
  });

  it("a failure waiting on a running handler's uncommitted queueing-lock entry waits alone: later outcomes are written, no backends pile up", async () => {
    // Found by review: the failure batch waited on the lock, was abandoned at the control
    // deadline and retried as connection trouble for as long as the handler ran — every
    // later outcome stayed doing behind it, and each retry left one more backend waiting.
    const app = newApp();
    const hold = gate();
    let deferredFollowUp = false;
    app.task('lw-follow', {}, async () => {});
    app.task('lw-holder', { transaction: true }, async (_a, ctx) => {
      await ctx.defer('lw-follow', {}, { queueingLock: 'lw-q' });
      deferredFollowUp = true;
      await hold.opened;
    });
    app.task(
      'lw-failer',
      { retry: { attempts: 5, backoff: { initial: { minutes: 5 } } } },
      async (_a, ctx) => {
        await recordRun(ctx.job.id);
        while (!deferredFollowUp) await sleep(20);
        throw new Error('fails while the follow-up is uncommitted');
      },
    );
    app.task('lw-quick', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
    });
    await withWorker(
      app,
      async () => {
        const failer = await deferred(app, 'lw-failer', {}, { queueingLock: 'lw-q' });
        await deferred(app, 'lw-holder');
        await waitFor('the failer to run', async () => (await runsOf(failer)) === 1);
        const quick = await deferred(app, 'lw-quick');
        await waitFor('the quick job to complete meanwhile', async () => (await row(quick)) === undefined);
        await sleep(5_000); // over two control deadlines (2 s) of retries
        const { rows } = await t.pool.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity
           WHERE application_name = 'outbatch-control' AND wait_event_type = 'Lock' AND datname = current_database()`,
        );
        assert.ok(rows[0].n <= 1, `${rows[0].n} control backends wait on a lock`);
        assert.equal((await row(failer))?.status, 'doing', 'its failure still waits');
        hold.open();
        await waitFor('the failure to be written', async () => (await row(failer))?.status !== 'doing');
        const written = await row(failer);
        // Superseded by its follow-up if that still waits in todo, else back to todo for a retry.
        assert.ok(['failed', 'todo'].includes(written?.status ?? ''), written?.status);
        assert.equal(written?.attempts, 1);
        assert.match(written?.last_error?.message ?? '', /fails while the follow-up is uncommitted/);
        assert.equal(await runsOf(failer), 1);
      },
      { stallTimeout: 6_000, concurrency: 4 },
    );
  });

  for (const moment of ['the in-transaction completion', 'the COMMIT'] as const) {
    it(`a job's connection gone half-open at ${moment}: the job's effect commits once, its lock frees, the worker stops`, {
      timeout: 60_000,
    }, async () => {
      // Found by review: our statements on a handler connection had no deadline — the job
      // stayed doing under a live worker, the next job of its lock never ran, stop() hung.
      const proxy = await startFaultProxy(databaseUrl());
      try {
        const app = newApp(proxy.url);
        app.task('ho-tx', { transaction: true }, async (_a, ctx) => {
          await recordRun(ctx.job.id);
          await ctx.tx!.query(`INSERT INTO "${t.schema}".effects VALUES ($1)`, [ctx.job.id]);
        });
        app.task('ho-next', {}, async (_a, ctx) => {
          await recordRun(ctx.job.id);
        });
        proxy.addRule({
          match: (m) =>
            m.connection.applicationName === 'outbatch-handler' &&
            (moment === 'the COMMIT' ? /^COMMIT/.test(m.text) : m.text.includes('outbatch_complete_one')),
          action: 'half-open',
        });
        const id = await deferred(app, 'ho-tx', {}, { lock: `ho-${moment}` });
        const next = await deferred(app, 'ho-next', {}, { lock: `ho-${moment}` });
        await withWorker(
          app,
          async () => {
            await waitFor(
              'both jobs to finish',
              async () => (await row(id)) === undefined && (await row(next)) === undefined,
            );
            const { rows } = await t.pool.query(
              `SELECT count(*)::int AS n FROM "${t.schema}".effects WHERE job = $1`,
              [id],
            );
            assert.equal(rows[0].n, 1, 'the effect is committed once');
            assert.equal(await runsOf(next), 1);
          },
          { stallTimeout: 6_000, shutdownTimeout: 1_000 },
        );
      } finally {
        await proxy.close();
      }
    });
  }

  it('a handler still inside a statement at the shutdown deadline: its backend is terminated, the job goes back uncounted', {
    timeout: 60_000,
  }, async () => {
    // Found by review: the ROLLBACK queued behind the handler's statement, and stop() waited
    // for that statement to end (25 s with shutdownTimeout 1 s).
    const app = newApp();
    let started = false;
    app.task('stuck-in-sql', { transaction: true }, async (_a, ctx) => {
      started = true;
      await ctx.tx!.query('SELECT pg_sleep(3600) /* stuck-in-sql */');
    });
    const controller = new AbortController();
    const running = app.run({ ...FAST, shutdownTimeout: 500, signal: controller.signal });
    const id = await deferred(app, 'stuck-in-sql');
    await waitFor('it runs', async () => started);
    controller.abort();
    await running; // the test's own timeout catches a stop that waits for the statement
    await app.close();
    assert.equal((await row(id))?.status, 'todo');
    assert.equal((await row(id))?.attempts, 0);
    await waitFor(
      'the backend to be gone',
      async () =>
        (
          await t.pool.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE '%stuck-in-sql */' AND pid <> pg_backend_pid()`,
          )
        ).rows[0].n === 0,
      5_000,
    );
    await t.pool.query(`DELETE FROM "${t.schema}".jobs WHERE id = $1`, [id]);
  });

  it("a job's COMMIT slower than the control deadline (deferred work) commits, within the stall timeout", async () => {
    // Found by review of the deadlines: a 3 s COMMIT (a deferred constraint trigger) was
    // killed at the 2 s control deadline on every attempt and dead-lettered.
    const s = `"${t.schema}"`;
    await t.pool.query(`
      CREATE TABLE ${s}.slow_items (v int);
      CREATE FUNCTION ${s}.slow_check() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$;
      CREATE CONSTRAINT TRIGGER slow_check AFTER INSERT ON ${s}.slow_items DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION ${s}.slow_check();`);
    const app = newApp();
    app.task('slow-commit', { transaction: true, retry: { attempts: 3 } }, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      await ctx.tx!.query(`INSERT INTO ${s}.slow_items VALUES (1)`);
    });
    await withWorker(
      app,
      async () => {
        const id = await deferred(app, 'slow-commit');
        await waitFor(
          'it completes',
          async () => (await row(id)) === undefined || (await row(id))?.status === 'failed',
        );
        assert.equal(await row(id), undefined);
        assert.equal(await runsOf(id), 1);
        const { rows } = await t.pool.query(`SELECT count(*)::int AS n FROM ${s}.slow_items`);
        assert.equal(rows[0].n, 1);
      },
      { stallTimeout: 6_000 },
    );
  });

  it('a completion given up at the shutdown deadline keeps its attempt: recovery counts it, the job is not run again uncounted', async () => {
    // Found by review: the shutdown sweep took the given-up completion for a claim never run.
    const proxy = await startFaultProxy(databaseUrl());
    try {
      const app = newApp(proxy.url);
      app.task('given-up', { retry: { attempts: 1 } }, async (_a, ctx) => {
        await recordRun(ctx.job.id);
      });
      const controller = new AbortController();
      const running = app.run({ ...FAST, shutdownTimeout: 1_000, signal: controller.signal });
      await waitFor(
        'the worker to register',
        async () => (await t.pool.query(`SELECT 1 FROM "${t.schema}".workers`)).rowCount,
      );
      proxy.addRule({ match: 'outbatch_complete_', action: 'cut', times: 1_000 });
      const id = await deferred(app, 'given-up');
      await waitFor('it runs', async () => (await runsOf(id)) === 1);
      controller.abort();
      await running;
      await app.close();
      const left = await row(id);
      assert.equal(left?.status, 'doing', 'left to recovery');
      assert.equal(left?.attempts, 1, 'its attempt is kept');
    } finally {
      await proxy.close();
    }
  });

  it('a revoked Proxy thrown by a handler is described, and the worker goes on', async () => {
    const app = newApp();
    app.task('revoked', { retry: { attempts: 1 } }, async () => {
      const { proxy, revoke } = Proxy.revocable({}, {});
      revoke();
      throw proxy;
    });
    app.task('fine', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
    });
    await withWorker(app, async () => {
      const id = await deferred(app, 'revoked');
      await waitFor('the job to be dead-lettered', async () => (await row(id))?.status === 'failed');
      assert.equal((await row(id))?.last_error?.message, 'handler threw a value that cannot be described');
      const fine = await deferred(app, 'fine');
      await waitFor('a healthy job', async () => (await row(fine)) === undefined);
    });
  });

  it('a completion cancelled once by statement_timeout is retried, not dead-lettered', async () => {
    const s = `"${t.schema}"`;
    await t.pool.query(`
      CREATE SEQUENCE ${s}.slow_once;
      CREATE FUNCTION ${s}.slow_once() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF OLD.task = 'slow-once' AND nextval('${s}.slow_once') = 1 THEN PERFORM pg_sleep(1); END IF;
        RETURN OLD;
      END $$;
      CREATE TRIGGER slow_once BEFORE DELETE ON ${s}.jobs FOR EACH ROW EXECUTE FUNCTION ${s}.slow_once();`);
    try {
      const url = new URL(databaseUrl());
      url.searchParams.set('options', '-c statement_timeout=500');
      const app = newApp(url.toString());
      app.task('slow-once', {}, async (_a, ctx) => {
        await recordRun(ctx.job.id);
      });
      await withWorker(app, async () => {
        const id = await deferred(app, 'slow-once');
        await waitFor('the job to complete', async () => (await row(id)) === undefined);
        assert.equal(await runsOf(id), 1);
      });
    } finally {
      await t.pool.query(
        `DROP TRIGGER slow_once ON ${s}.jobs; DROP FUNCTION ${s}.slow_once(); DROP SEQUENCE ${s}.slow_once`,
      );
    }
  });

  it('a shutdown return racing a new job of its queueing lock is superseded, not "could not be recorded"', async () => {
    const app = newApp();
    app.task('stop-race', {}, async (_a, ctx) => {
      await recordRun(ctx.job.id);
      await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
      throw new Error('stopped');
    });
    const controller = new AbortController();
    const running = app.run({ ...FAST, signal: controller.signal });
    const id = await deferred(app, 'stop-race', {}, { queueingLock: 'ql-race' });
    await waitFor('it runs', async () => (await runsOf(id)) === 1);
    // A producer defers the next job of that queueing lock and commits a moment later.
    const client = await t.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(
        `INSERT INTO "${t.schema}".jobs (task, queueing_lock) VALUES ('stop-race', 'ql-race')`,
      );
      controller.abort();
      await sleep(400); // the worker's return to todo now waits on the producer's index entry
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    await running;
    await app.close();
    assert.match((await row(id))?.last_error?.message ?? '', /superseded by job/);
    await t.pool.query(`DELETE FROM "${t.schema}".jobs WHERE queueing_lock = 'ql-race'`);
  });
});
