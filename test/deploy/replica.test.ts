/**
 * `readUrl` against a real streaming replica of our own (test/replicaPair.ts): processor
 * pages and event reads come from the replica, checkpoints and effects commit on the
 * primary. A replica whose replay is paused only delays: the processor waits (status says
 * so), and once replay resumes every event is applied exactly once — also when the
 * checkpoint is ahead of everything the replica has (reads switched from the primary).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startAdminServer } from '../../src/admin/server.js';
import { type App, createApp } from '../../src/index.js';
import { checkBelowPrimaryHorizon, ReplicaAheadError } from '../../src/processors/replicaReads.js';
import { appliedTable, captureLog, countApplied, databaseUrl, runCli, uniqueSchema } from '../helpers.js';
import { waitFor } from '../jobs/support.js';
import { type ReplicaPair, replicaPairUnavailable, startReplicaPair } from '../replicaPair.js';

const unavailable = replicaPairUnavailable();
const NAME = 'counter';
const schema = uniqueSchema('replica');
const q = `"${schema}"`;
let pair: ReplicaPair | undefined;
const apps: App[] = [];
const workers: { controller: AbortController; running: Promise<void> }[] = [];
const replicaLog = captureLog('info');

/** An app on the pair's primary, reading on the replica unless `readUrl` says otherwise. */
function makeApp(readUrl: string | undefined, logger = captureLog('warn').log): App {
  const app = createApp({ databaseUrl: pair!.primaryUrl, readUrl, schema, logger });
  apps.push(app);
  // Each event counted once per application: a second application shows as n = 2.
  app.processor(
    NAME,
    {
      trigger: { onAppend: { debounce: { milliseconds: 10 } } },
      batchSize: 7,
      // A run that fails on the replica being away is retried soon (the test's outage is short).
      retry: { backoff: { initial: { milliseconds: 50 }, max: { milliseconds: 500 } } },
    },
    (events$, ctx) => events$.pipe(countApplied(ctx.tx, q)),
  );
  return app;
}

function startWorker(app: App) {
  const controller = new AbortController();
  const worker = {
    controller,
    running: app.run({ concurrency: 2, signal: controller.signal, pollInterval: 50 }),
  };
  workers.push(worker);
  return async () => {
    controller.abort();
    await worker.running;
  };
}

async function append(app: App, count: number, label: string) {
  // Several transactions, so pages cross transaction boundaries.
  for (let i = 0; i < count; i += 5) {
    const n = Math.min(5, count - i);
    await app.events.append(
      Array.from({ length: n }, (_, k) => ({ stream: `${label}-${i + k}`, type: 'T', data: {} })),
    );
  }
}

/** How many events were applied, and how many more than once (on the primary). */
async function applied(): Promise<{ events: number; twice: number }> {
  const { rows } = await pair!.primary.query<{ events: number; twice: number }>(
    `SELECT count(*)::int AS events, count(*) FILTER (WHERE n > 1)::int AS twice FROM ${q}.applied`,
  );
  return rows[0]!;
}

async function eventCount(on: 'primary' | 'replica'): Promise<number> {
  const { rows } = await pair![on].query<{ n: number }>(`SELECT count(*)::int AS n FROM ${q}.events`);
  return rows[0]!.n;
}

describe('processors and readers on a streaming replica', { skip: unavailable }, () => {
  let app: App;

  before(async () => {
    pair = await startReplicaPair();
    app = makeApp(pair.replicaUrl, replicaLog.log);
    await app.migrate();
    await pair.primary.query(appliedTable(q));
    await pair.caughtUp();
  });

  after(async () => {
    for (const worker of workers) worker.controller.abort();
    await Promise.allSettled(workers.map((worker) => worker.running));
    await Promise.allSettled(apps.map((each) => each.close()));
    await pair?.stop();
  });

  it('reads pages on the replica and commits effects and checkpoints on the primary, once each', async () => {
    const stop = startWorker(app);
    try {
      await append(app, 40, 'a');
      await waitFor('40 events applied', async () => (await applied()).events === 40);
      assert.deepEqual(await applied(), { events: 40, twice: 0 });
      const [status] = await app.processors.status(NAME);
      assert.equal(status!.readReplica?.inRecovery, true);
    } finally {
      await stop();
    }
  });

  it('waits for a replica whose replay is paused, says so in status, and catches up exactly once', async () => {
    const stop = startWorker(app);
    try {
      await pair!.pauseReplay();
      await append(app, 30, 'b');
      const read = await app.events.read({ limit: 1000 });
      assert.equal(
        read.events.length,
        40,
        'events.read sees the replica, which has not replayed the new events',
      );
      const waiting = await waitFor('status to show the processor waiting for the replica', async () => {
        const [status] = await app.processors.status(NAME);
        return status?.readReplica?.waiting && status.readReplica.replayPaused ? status : undefined;
      });
      assert.ok(waiting.readReplica!.lagBytes > 0);
      await waitFor('the run to say it waits for the replica', async () =>
        replicaLog.lines.some((line) => line.includes('waits for the replica at readUrl')),
      );
      // Only delayed: nothing of the new events could be applied without the replica having them.
      assert.deepEqual(await applied(), { events: 40, twice: 0 });

      // The dashboard, /metrics and the CLI say the same.
      const dashboard = await startAdminServer({ app, port: 0 });
      try {
        const api = (await (await fetch(`${dashboard.url}/api/processors`)).json()) as {
          processors: { readReplica?: { waiting: boolean; replayPaused: boolean } }[];
        };
        assert.equal(api.processors[0]?.readReplica?.waiting, true);
        const metrics = await (await fetch(`${dashboard.url}/metrics`)).text();
        assert.match(
          metrics,
          /^outbatch_processor_waiting_for_replica\{processor="counter",version="1"\} 1$/m,
        );
        assert.match(metrics, /^outbatch_read_replica_lag_seconds \d/m);
      } finally {
        await dashboard.close();
      }
      const cli = await runCli(['processors', 'status', NAME], {
        DATABASE_URL: pair!.primaryUrl,
        OUTBATCH_READ_URL: pair!.replicaUrl,
        OUTBATCH_SCHEMA: schema,
      });
      assert.equal(cli.code, 0, cli.stderr);
      assert.match(
        cli.stdout,
        /read on the replica at readUrl, .* behind, replay paused; waiting for it: counter@1/,
      );

      await pair!.resumeReplay();
      await waitFor('70 events applied after replay resumed', async () => (await applied()).events === 70);
      assert.deepEqual(await applied(), { events: 70, twice: 0 });
      await pair!.caughtUp();
      const [status] = await app.processors.status(NAME);
      assert.equal(status!.readReplica?.waiting, false);
      assert.equal(status!.readReplica?.replayPaused, false);
    } finally {
      await pair!.resumeReplay().catch(() => {});
      await stop();
    }
  });

  it('never skips when the checkpoint is ahead of the replica (reads switched from the primary)', async () => {
    await pair!.pauseReplay();
    try {
      // Primary reads move the checkpoint past everything the paused replica has.
      const onPrimary = makeApp(undefined);
      const stopPrimary = startWorker(onPrimary);
      await append(onPrimary, 20, 'c');
      await waitFor('90 events applied by primary reads', async () => (await applied()).events === 90);
      await stopPrimary();
      const { rows: ahead } = await pair!.primary.query<{ tx: string }>(
        `SELECT checkpoint_tx::text AS tx FROM ${q}.processors WHERE name = $1`,
        [NAME],
      );
      const { rows: horizon } = await pair!.replica.query<{ xmin: string }>(
        'SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin',
      );
      assert.ok(
        BigInt(ahead[0]!.tx) >= BigInt(horizon[0]!.xmin),
        'the checkpoint is past the replica horizon',
      );

      const stop = startWorker(app);
      try {
        await append(app, 10, 'd');
        assert.equal(await eventCount('replica'), 70, 'the replica holds none of the newer events');
        await waitFor('status to show the processor waiting for the replica', async () => {
          const [status] = await app.processors.status(NAME);
          return status?.readReplica?.waiting;
        });
        assert.deepEqual(await applied(), { events: 90, twice: 0 });
        await pair!.resumeReplay();
        await waitFor('100 events applied', async () => (await applied()).events === 100);
        assert.deepEqual(await applied(), { events: 100, twice: 0 });
        assert.equal(await eventCount('primary'), 100);
      } finally {
        await stop();
      }
    } finally {
      await pair!.resumeReplay().catch(() => {});
    }
  });

  it('replays on the replica: a rewind to the start re-applies every event once more, waiting for the rest', async () => {
    const stop = startWorker(app);
    try {
      await pair!.pauseReplay();
      await append(app, 10, 'r'); // on the primary only, for now
      await app.processors.replay(NAME, { from: 'start' });
      // The rewound run reads what the replica has (100 events) again, then waits for it.
      await waitFor("the replica's events applied a second time", async () => {
        const { rows } = await pair!.primary.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM ${q}.applied WHERE n = 2`,
        );
        return rows[0]!.n === 100;
      });
      await waitFor('status to show the processor waiting for the replica', async () => {
        const [status] = await app.processors.status(NAME);
        return status?.readReplica?.waiting;
      });
      assert.deepEqual(await applied(), { events: 100, twice: 100 });
      await pair!.resumeReplay();
      await waitFor('110 events applied', async () => (await applied()).events === 110);
      const { rows } = await pair!.primary.query<{ n: number; count: number }>(
        `SELECT n, count(*)::int AS count FROM ${q}.applied GROUP BY n ORDER BY n`,
      );
      assert.deepEqual(rows, [
        { n: 1, count: 10 },
        { n: 2, count: 100 },
      ]);
    } finally {
      await pair!.resumeReplay().catch(() => {});
      await stop();
    }
  });

  it('follows on the replica: a wake-up before the replica has the rows is not lost', async () => {
    const seen: bigint[] = [];
    const subscription = app.events.follow('0:0', { pollIntervalMs: 50 }).subscribe((event) => {
      seen.push(event.position);
    });
    try {
      await waitFor('follow to catch up with the log', async () => seen.length === 110);
      await pair!.pauseReplay();
      await append(app, 6, 'e'); // each append NOTIFYs on the primary, before the replica has it
      assert.equal(seen.length, 110);
      await pair!.resumeReplay();
      await waitFor('follow to deliver the new events', async () => seen.length === 116);
      assert.equal(new Set(seen).size, 116, 'each event once');
    } finally {
      subscription.unsubscribe();
      await pair!.resumeReplay().catch(() => {});
    }
  });

  it('rides out the replica going away: runs fail and retry, nothing is saved, then every event once', async () => {
    const stop = startWorker(app);
    try {
      await waitFor('the processor caught up', async () => (await applied()).events === 116);
      await pair!.stopReplica();
      await append(app, 12, 'f');
      // The run the append triggers fails on the read and is retried: its job counts attempts.
      await waitFor('a processor run to fail on the replica being away', async () => {
        const { rows } = await pair!.primary.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM ${q}.jobs WHERE lock = $1 AND attempts > 0`,
          [`processor:${NAME}@1`],
        );
        return rows[0]!.n > 0;
      });
      assert.deepEqual(await applied(), { events: 116, twice: 100 });
      await pair!.startReplica();
      await waitFor('128 events applied', async () => (await applied()).events === 128);
      assert.deepEqual(await applied(), { events: 128, twice: 100 });
    } finally {
      await pair!.startReplica().catch(() => {});
      await stop();
    }
  });

  it("is gap-safe on the replica's own horizon: an event whose transaction commits late is not skipped", async () => {
    const stop = startWorker(app);
    const late = await pair!.primary.connect();
    try {
      await waitFor('the processor caught up', async () => (await applied()).events === 128);
      await late.query('BEGIN');
      await app.events.append({ stream: 'late-1', type: 'T', data: {} }, { client: late });
      await append(app, 5, 'g'); // committed after the late event was written, before it commits
      await pair!.caughtUp();
      // The replica has the five, but its horizon is held below the open transaction:
      // runs stop held back (not waiting for the replica) and apply none of them.
      await waitFor('a run held back by the open transaction', async () => {
        const { rows } = await pair!.primary.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM ${q}.jobs WHERE lock = $1 AND (args->>'heldRuns')::int >= 2`,
          [`processor:${NAME}@1`],
        );
        return rows[0]!.n > 0;
      });
      assert.deepEqual(await applied(), { events: 128, twice: 100 });
      const [status] = await app.processors.status(NAME);
      assert.equal(status!.readReplica?.waiting, false);
      await late.query('COMMIT');
      await waitFor('134 events applied', async () => (await applied()).events === 134);
      assert.deepEqual(await applied(), { events: 134, twice: 100 });
    } finally {
      await late.query('ROLLBACK').catch(() => {});
      late.release();
      await stop();
    }
  });

  it('rebuilds on the replica: the new version reads every event from the start, once, and waits for the rest', async () => {
    const stop = startWorker(app);
    try {
      await waitFor('the processor caught up', async () => (await applied()).events === 134);
      await pair!.pauseReplay();
      await append(app, 4, 'h'); // on the primary only, for now
      const { version } = await app.processors.rebuild(NAME);
      assert.equal(version, 2);
      // Version 2 applies what the replica has (134 events) once more; both versions then wait.
      await waitFor('the rebuild through what the replica has', async () => (await applied()).twice === 134);
      assert.deepEqual(await applied(), { events: 134, twice: 134 });
      await pair!.resumeReplay();
      await waitFor('both versions through the 4 new events', async () => (await applied()).twice === 138);
      const { rows } = await pair!.primary.query<{ n: number; count: number }>(
        `SELECT n, count(*)::int AS count FROM ${q}.applied GROUP BY n ORDER BY n`,
      );
      assert.deepEqual(rows, [
        { n: 2, count: 38 },
        { n: 3, count: 100 },
      ]);
    } finally {
      await pair!.resumeReplay().catch(() => {});
      await stop();
    }
  });

  it('re-drives on the primary: every event it counts is deferred, even with the replica behind', async () => {
    await pair!.pauseReplay();
    try {
      await append(app, 3, 'i'); // on the primary only, for now
      const result = await app.events.redrive({ from: 'start', task: 'sink', batch: 10_000 });
      assert.equal(result.events, 141);
      const { rows } = await pair!.primary.query<{ n: number }>(
        `SELECT coalesce(sum(jsonb_array_length(args->'events')), 0)::int AS n FROM ${q}.jobs WHERE task = 'sink'`,
      );
      assert.equal(rows[0]!.n, 141);
    } finally {
      await pair!.resumeReplay().catch(() => {});
    }
    await pair!.primary.query(`DELETE FROM ${q}.jobs WHERE task = 'sink'`);
  });

  it('refuses a checkpoint past the primary horizon (a server that is no replica of this primary)', async () => {
    const client = await pair!.primary.connect();
    try {
      await client.query('BEGIN');
      await assert.rejects(checkBelowPrimaryHorizon(client, 1n << 40n), ReplicaAheadError);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
  });

  it('accepts the primary itself as readUrl, and says in status it is no standby', async () => {
    const self = makeApp(pair!.primaryUrl);
    const [status] = await self.processors.status(NAME); // version 1 (2 is rebuilding)
    assert.equal(status!.readReplica?.inRecovery, false);
    assert.equal(status!.readReplica?.lagBytes, 0);
    assert.equal((await self.events.read({ limit: 1000 })).events.length, 141);
  });

  it('names readUrl when its server cannot be reached, and uses it once it can', async () => {
    await pair!.stopReplica();
    try {
      const early = makeApp(pair!.replicaUrl);
      await assert.rejects(early.events.read(), (error: Error) => {
        assert.match(
          error.message,
          /^readUrl: cannot connect to PostgreSQL at 127\.0\.0\.1:\d+: connection refused/,
        );
        return true;
      });
      await pair!.startReplica();
      assert.equal((await early.events.read({ limit: 1000 })).events.length, 141);
    } finally {
      await pair!.startReplica().catch(() => {});
    }
  });

  it('refuses a readUrl on another cluster, in one line', async () => {
    const other = makeApp(databaseUrl());
    // The server the tests run on, wherever that is (the machine's, or a matrix run's port).
    const target = new URL(databaseUrl());
    await assert.rejects(other.events.read(), (error: Error) => {
      assert.ok(
        error.message.startsWith(`readUrl (${target.hostname}:${target.port || 5432}) is another cluster `),
        error.message,
      );
      assert.match(error.message, /streaming replica of databaseUrl$/);
      return true;
    });
    // A worker with processors refuses to start on it, with the same line.
    await assert.rejects(other.run({ signal: AbortSignal.timeout(30_000) }), /is another cluster/);
  });
  it('never re-applies events a lagging replica still holds under their ids from before a rebase', async () => {
    // A schema of its own: the rebase rewrites every stored tx id in it.
    const other = uniqueSchema('replica_rebase');
    const oq = `"${other}"`;
    const rebased = createApp({
      databaseUrl: pair!.primaryUrl,
      readUrl: pair!.replicaUrl,
      schema: other,
      logger: captureLog('warn').log,
    });
    apps.push(rebased);
    rebased.processor(
      NAME,
      { trigger: { onAppend: { debounce: { milliseconds: 10 } } }, batchSize: 7 },
      (events$, ctx) => events$.pipe(countApplied(ctx.tx, oq)),
    );
    await rebased.migrate();
    await pair!.primary.query(appliedTable(oq));
    const twice = async () => {
      const { rows } = await pair!.primary.query<{ events: number; twice: number }>(
        `SELECT count(*)::int AS events, count(*) FILTER (WHERE n > 1)::int AS twice FROM ${oq}.applied`,
      );
      return rows[0]!;
    };
    let stop = startWorker(rebased);
    try {
      await append(rebased, 20, 'k');
      await waitFor('20 events applied', async () => (await twice()).events === 20);
      await stop();
      await pair!.caughtUp();
      await pair!.pauseReplay();
      // On the primary: events and checkpoints get new, smaller ids; the replica has the old ones.
      await rebased.events.rebaseTxIds();
      stop = startWorker(rebased);
      await append(rebased, 5, 'l');
      // The replica still holds the 20 under their old ids, after the rebased checkpoint.
      await waitFor('runs that wait for the replica', async () => {
        const { rows } = await pair!.primary.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM ${oq}.jobs WHERE lock = $1 AND (args->>'heldRuns')::int >= 2`,
          [`processor:${NAME}@1`],
        );
        return rows[0]!.n > 0;
      });
      assert.deepEqual(await twice(), { events: 20, twice: 0 });
      await pair!.resumeReplay();
      await waitFor('25 events applied', async () => (await twice()).events === 25);
      assert.deepEqual(await twice(), { events: 25, twice: 0 });
    } finally {
      await pair!.resumeReplay().catch(() => {});
      await stop();
      await pair!.primary.query(`DROP SCHEMA IF EXISTS ${oq} CASCADE`);
    }
  });
});

describe('a malformed readUrl', () => {
  it('from OUTBATCH_READ_URL fails a CLI command with exit 2 and one line naming the variable', async () => {
    const result = await runCli(['processors', 'status'], {
      DATABASE_URL: databaseUrl(),
      OUTBATCH_READ_URL: 'replica:5432',
    });
    assert.equal(result.code, 2);
    assert.equal(
      result.stderr,
      'outbatch: OUTBATCH_READ_URL has protocol "replica:": expected postgres://user:password@host:port/database of a streaming replica\n',
    );
  });

  it('is refused when the app is created, naming the option', () => {
    assert.throws(
      () => createApp({ databaseUrl: databaseUrl(), readUrl: 'not a url' }),
      /^ValidationError: readUrl is not a valid URL/,
    );
    assert.throws(() => createApp({ databaseUrl: databaseUrl(), readUrl: 'mysql://h/db' }), {
      message: /^readUrl has protocol "mysql:"/,
    });
  });
});
