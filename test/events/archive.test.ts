import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { tap } from 'rxjs';
import { ArchivedEventsError } from '../../src/errors.js';
import { verifyArchive } from '../../src/events/archiveFile.js';
import {
  appliedTable,
  countApplied,
  createTestApp,
  databaseUrl,
  isolatedApp,
  runCli,
  type TestApp,
  uniqueSchema,
} from '../helpers.js';
import { waitFor } from '../jobs/support.js';
import { waitUntilReadable } from './readable.js';

const folder = mkdtempSync(path.join(tmpdir(), 'outbatch-archive-'));

/** Partitions of 100 positions instead of 10 million: the fresh schema's empty ones are replaced. */
async function smallPartitions(t: TestApp) {
  const q = `"${t.schema}"`;
  const names = (await t.pool.query(`SELECT name FROM ${q}.event_partition_bounds`)).rows.map((r) => r.name);
  await t.pool.query(`SELECT ${q}.drop_event_partitions($1::text[], $2::bigint[])`, [
    names,
    names.map(() => 0),
  ]);
  await t.pool.query(`UPDATE ${q}.event_log SET partition_size = 100`);
  // The first explicitly: with no range partition at all, the worker's pass starts clear of
  // any append in flight, above position 1.
  await t.pool.query(`SELECT ${q}.create_event_partition(1, 101)`);
  await ahead(t);
}

const ahead = (t: TestApp) => t.pool.query(`SELECT "${t.schema}".create_event_partitions_ahead()`);

/** `count` events over several streams and transactions, with metadata and some idempotency keys. */
async function appendSome(t: TestApp, count: number, label = 'a') {
  for (let done = 0; done < count; ) {
    const n = Math.min(17, count - done);
    await t.app.events.append(
      Array.from({ length: n }, (_, i) => ({
        stream: `${i % 3 === 0 ? 'audit' : 'order'}-${label}-${(done + i) % 5}`,
        type: i % 2 === 0 ? 'Placed' : 'Paid',
        data: { i: done + i, text: 'tab\there "quoted" \\ ünï' },
        metadata: { by: `user-${i}` },
        idempotencyKey: (done + i) % 4 === 0 ? `key-${label}-${done + i}` : undefined,
      })),
    );
    done += n;
    await ahead(t);
  }
}

async function backdate(t: TestApp, below: number, days: number) {
  await t.pool.query(
    `UPDATE "${t.schema}".events SET recorded_at = recorded_at - make_interval(days => $2) WHERE position < $1`,
    [below, days],
  );
}

const ROWS = (schema: string, below?: number) => `
  SELECT position::text, tx_id::text, stream, stream_version::text, type, data::text, metadata::text,
         to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS recorded_at, idempotency_key
  FROM "${schema}".events ${below === undefined ? '' : `WHERE position < ${below}`} ORDER BY tx_id, position`;

describe('events archive, import and retention', () => {
  let t: TestApp;
  before(async () => {
    t = await isolatedApp('archive');
    await smallPartitions(t);
  });
  after(async () => t.cleanup());

  it('round-trips exactly: archive two partitions, drop them, import them elsewhere', async () => {
    const q = `"${t.schema}"`;
    await t.pool.query(appliedTable(q));
    t.app.processor(
      'counter',
      { batchSize: 50, trigger: { onAppend: { debounce: { milliseconds: 10 } } } },
      (events$, ctx) => countApplied(ctx.tx, q)(events$),
    );
    await appendSome(t, 240);
    // A number JavaScript would round, through the SQL function.
    await t.pool.query(
      `SELECT ${q}.append_events('[{"stream":"num-1","type":"Big","data":{"n":12345678901234567890.12345678901234567890}}]'::jsonb)`,
    );
    await appendSome(t, 30, 'b');
    await ahead(t);
    await backdate(t, 201, 10);
    await t.app.events.retention.set({ keepDays: 5 });
    const controller = new AbortController();
    const running = t.app.run({ concurrency: 2, signal: controller.signal, pollInterval: 50 });
    const total = Number((await t.pool.query(`SELECT count(*) FROM ${q}.events`)).rows[0].count);
    try {
      // Other sessions' open transactions hold gap-safe readers back: a generous wait.
      await waitFor(
        'the processor passes every event',
        async () => {
          const { rows } = await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.applied`);
          return rows[0].n === total;
        },
        90_000,
      );
    } finally {
      controller.abort();
      await running;
    }

    const original = (await t.pool.query(ROWS(t.schema, 201))).rows;
    const file = path.join(folder, 'round-trip.ndjson.gz');
    const dry = await t.app.events.archive({ before: '201', dryRun: true });
    assert.deepEqual(
      dry.partitions.map((p) => p.partition),
      ['events_from_1', 'events_from_101'],
    );
    assert.equal(existsSync(file), false);

    const result = await t.app.events.archive({ before: '201', to: file });
    assert.deepEqual(
      result.partitions.map((p) => p.partition),
      ['events_from_1', 'events_from_101'],
    );
    assert.equal(result.events, original.length);
    assert.match(result.stopped!.reason, /upper bound 301 is above --before 201/);
    const partitions = (await t.pool.query(`SELECT name FROM ${q}.event_partition_bounds ORDER BY lower`))
      .rows;
    assert.equal(partitions[0].name, 'events_from_201');
    assert.equal(
      (await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.events WHERE position < 201`)).rows[0].n,
      0,
    );
    const archives = (await t.pool.query(`SELECT * FROM ${q}.event_archives ORDER BY from_position`)).rows;
    assert.equal(archives.length, 2);
    assert.equal(archives[0].file, file);
    assert.equal(Number(archives[0].events) + Number(archives[1].events), original.length);
    const verified = await verifyArchive(file, []);
    assert.equal(verified.sha256, archives[0].sha256);
    assert.equal(verified.lines, original.length);
    const keys = await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.event_keys WHERE position < 201`);
    assert.equal(keys.rows[0].n, 0);
    const audit = await t.pool.query(`SELECT details FROM ${q}.audit_log WHERE action = 'events.archive'`);
    assert.equal(audit.rows.length, 1);

    // Reading before the horizon is refused, naming the file; after it is fine.
    await assert.rejects(t.app.events.read(), (error: unknown) => {
      assert.ok(error instanceof ArchivedEventsError);
      assert.equal(error.code, 'OUTBATCH_ARCHIVED');
      assert.match(error.message, /round-trip\.ndjson\.gz/);
      assert.match(error.message, /outbatch events import/);
      return true;
    });
    const page = await t.app.events.read({ after: result.horizon });
    assert.ok(page.events.every((event) => event.position >= 201n));
    await assert.rejects(t.app.events.stream('order-a-1'), ArchivedEventsError);
    await assert.rejects(t.app.processors.replay('counter', { from: 'start' }), /--from archived --yes/);
    await assert.rejects(t.app.processors.replay('counter', { from: '5' }), ArchivedEventsError);
    await assert.rejects(t.app.events.redrive({ from: 'start', task: 'nothing' }), ArchivedEventsError);
    const moved = await t.app.processors.replay('counter', { from: 'archived' });
    assert.equal(moved.checkpoint, result.horizon);

    // A processor new to the archived log: its runs fail with the error, naming the replay
    // that starts it after the archive; once replayed there, it reads what is left.
    let seen = 0;
    t.app.processor(
      'late',
      { batchSize: 50, trigger: { onAppend: { debounce: { milliseconds: 10 } } } },
      (events$) => events$.pipe(tap(() => seen++)),
    );
    const again = new AbortController();
    const rerun = t.app.run({ concurrency: 2, signal: again.signal, pollInterval: 50 });
    try {
      const failure = await waitFor('the new processor fails on the archive', async () => {
        const { rows } = await t.pool.query(
          `SELECT last_error::text AS error FROM ${q}.jobs WHERE task = 'processor:late' AND last_error IS NOT NULL LIMIT 1`,
        );
        return rows[0]?.error as string | undefined;
      });
      // The job's last_error is cut short; the worker's log has the whole message, way out included.
      assert.match(failure, /processor \\"late\\" reading after checkpoint \\"0:0\\" needs archived events/);
      await t.app.processors.replay('late', { from: 'archived' });
      const left = total - original.length;
      await waitFor('the new processor reads what is left', async () => seen === left, 90_000);
    } finally {
      again.abort();
      await rerun;
    }

    // Import into a schema of its own, checked against the archive's record.
    const target = uniqueSchema('imported');
    const app2 = createTestApp({ schema: target });
    try {
      const imported = await app2.events.importArchive({ file, archivedIn: t.schema });
      assert.equal(imported.events, original.length);
      assert.equal(imported.checkedAgainst, 2);
      assert.equal(imported.txIdsAhead, undefined);
      assert.deepEqual((await t.pool.query(ROWS(target))).rows, original);
      const overflow = await t.pool.query(`SELECT count(*)::int AS n FROM "${target}".events_overflow`);
      assert.equal(overflow.rows[0].n, 0);
      const restoredKeys = await t.pool.query(`SELECT count(*)::int AS n FROM "${target}".event_keys`);
      assert.equal(restoredKeys.rows[0].n, original.filter((row) => row.idempotency_key !== null).length);
      // Importing it again: the positions exist, nothing written.
      await assert.rejects(app2.events.importArchive({ file }), /already exists in schema/);
      // Back into the schema that archived it: refused.
      await assert.rejects(t.app.events.importArchive({ file }), /archived these positions itself/);

      // Refused after making partitions for itself: it takes them away again. A schema whose
      // log starts at 1000 and already holds one of the file's idempotency keys.
      const third = uniqueSchema('import_refused');
      const app3 = createTestApp({ schema: third });
      try {
        await app3.migrate();
        const q3 = `"${third}"`;
        await t.pool.query(`DROP TABLE ${q3}.events_from_1`);
        await t.pool.query(`SELECT ${q3}.create_event_partition(1000, 2000)`);
        await t.pool.query(`SELECT setval('${q3}.events_position_seq', 999)`);
        const key = original.find((row) => row.idempotency_key !== null)!.idempotency_key as string;
        await app3.events.append({ stream: 'here', type: 'T', data: {}, idempotencyKey: key });
        const before = (await t.pool.query(`SELECT name FROM ${q3}.event_partition_bounds ORDER BY lower`))
          .rows;
        await assert.rejects(app3.events.importArchive({ file }), /repeats a stored value/);
        const after = (await t.pool.query(`SELECT name FROM ${q3}.event_partition_bounds ORDER BY lower`))
          .rows;
        assert.deepEqual(after, before, 'the partitions the import made were dropped');
        assert.equal((await t.pool.query(`SELECT count(*)::int AS n FROM ${q3}.events`)).rows[0].n, 1);
      } finally {
        await app3.close();
        await t.pool.query(`DROP SCHEMA IF EXISTS "${third}" CASCADE`);
      }

      // A processor on the imported schema, from scratch: every event exactly once.
      const q2 = `"${target}"`;
      await t.pool.query(appliedTable(q2));
      app2.processor(
        'counter',
        { batchSize: 40, trigger: { onAppend: { debounce: { milliseconds: 10 } } } },
        (events$, ctx) => countApplied(ctx.tx, q2)(events$),
      );
      const stop = new AbortController();
      const run = app2.run({ concurrency: 2, signal: stop.signal, pollInterval: 50 });
      try {
        await waitFor(
          'the imported events are processed',
          async () => {
            const { rows } = await t.pool.query(`SELECT count(*)::int AS n FROM ${q2}.applied`);
            return rows[0].n === original.length;
          },
          90_000,
        );
      } finally {
        stop.abort();
        await run;
      }
      const twice = await t.pool.query(`SELECT count(*)::int AS n FROM ${q2}.applied WHERE n <> 1`);
      assert.equal(twice.rows[0].n, 0);
    } finally {
      await app2.close();
      await t.pool.query(`DROP SCHEMA IF EXISTS "${target}" CASCADE`);
    }
  });
});

describe('events import from another cluster', () => {
  it('says when the imported tx ids are ahead of this server, so readers would not see them', async () => {
    const file = path.join(folder, 'ahead.ndjson.gz');
    writeFileSync(
      file,
      gzipSync(
        '{"position":7,"tx_id":"900000000000","stream":"far-1","stream_version":1,"type":"T","data":{"n":1},"metadata":{},"recorded_at":"2026-01-01T00:00:00.123456Z","idempotency_key":"far-key"}\n',
      ),
    );
    const target = uniqueSchema('ahead');
    const app = createTestApp({ schema: target });
    try {
      const result = await app.events.importArchive({ file });
      assert.equal(result.events, 1);
      assert.equal(result.txIdsAhead?.highestStored, 900000000000n);
      await assert.rejects(app.events.checkTxIdHorizon(), /rebase-tx-ids/);
    } finally {
      await app.close();
      const pool = (await import('pg')).default.Pool;
      const admin = new pool({ connectionString: databaseUrl(), max: 1 });
      await admin.query(`DROP SCHEMA IF EXISTS "${target}" CASCADE`);
      await admin.end();
    }
  });
});

describe('events archive: what stays, and why', () => {
  let t: TestApp;
  before(async () => {
    t = await isolatedApp('archive_refuse');
    await smallPartitions(t);
    await appendSome(t, 150);
    // Another file's open transaction would make the partition "not yet readable".
    await waitUntilReadable(t.pool, t.schema);
  });
  after(async () => t.cleanup());

  const q = () => `"${t.schema}"`;
  const state = async () =>
    JSON.stringify([
      (await t.pool.query(`SELECT name FROM ${q()}.event_partition_bounds ORDER BY lower`)).rows,
      (await t.pool.query(`SELECT * FROM ${q()}.event_log`)).rows,
      (await t.pool.query(`SELECT count(*) FROM ${q()}.event_archives`)).rows,
      (await t.pool.query(`SELECT count(*) FROM ${q()}.event_keys`)).rows,
    ]);

  it('keeps everything without a policy, names the stream and the command', async () => {
    const before = await state();
    const file = path.join(folder, 'refused.ndjson.gz');
    const result = await t.app.events.archive({ before: '101', to: file });
    assert.equal(result.partitions.length, 0);
    assert.match(result.stopped!.reason, /has no retention policy, so it is kept forever/);
    assert.match(result.stopped!.reason, /outbatch events retention set --stream-prefix/);
    assert.equal(existsSync(file), false);
    assert.equal(await state(), before);
  });

  it('keeps events a policy keeps forever, or that are too recent', async () => {
    await t.app.events.retention.set({ keepDays: 30 });
    let result = await t.app.events.archive({ before: '101', dryRun: true });
    assert.match(result.stopped!.reason, /is kept 30 days by the policy for stream prefix "" and any type/);
    await backdate(t, 101, 40);
    await t.app.events.retention.set({ streamPrefix: 'audit-', keepDays: 'forever' });
    result = await t.app.events.archive({ before: '101', dryRun: true });
    assert.match(
      result.stopped!.reason,
      /stream "audit-a-\d" \(type \w+\) is kept forever by the policy for stream prefix "audit-"/,
    );
    // A type-specific row wins over the any-type one of the same prefix.
    await t.app.events.retention.set({ streamPrefix: 'audit-', type: 'Placed', keepDays: 1 });
    await t.app.events.retention.set({ streamPrefix: 'audit-', type: 'Paid', keepDays: 1 });
    result = await t.app.events.archive({ before: '101', dryRun: true });
    assert.deepEqual(
      result.partitions.map((p) => p.partition),
      ['events_from_1'],
    );
    assert.equal((await t.app.events.retention.list()).length, 4);
    await t.app.events.retention.remove({ streamPrefix: 'audit-', type: 'Paid' });
    await assert.rejects(
      t.app.events.retention.remove({ streamPrefix: 'nope' }),
      /there is no retention policy for stream prefix "nope"/,
    );
    await t.app.events.retention.set({ streamPrefix: 'audit-', type: 'Paid', keepDays: 1 });
  });

  it('keeps a partition a processor has not passed, and one still being filled', async () => {
    await t.pool.query(`INSERT INTO ${q()}.processors (name, version, active) VALUES ('behind', 1, true)`);
    let result = await t.app.events.archive({ before: '101', dryRun: true });
    assert.match(result.stopped!.reason, /processor "behind" version 1 is at checkpoint 0:0/);
    await t.pool.query(
      `UPDATE ${q()}.processors SET retired_at = now(), active = false WHERE name = 'behind'`,
    );
    await backdate(t, 1000, 40);
    result = await t.app.events.archive({ before: '100000', dryRun: true });
    assert.deepEqual(
      result.partitions.map((p) => p.partition),
      ['events_from_1'],
    );
    assert.match(result.stopped!.reason, /still being filled/);
  });

  it('crash safety: a leftover file is overwritten; a drop that cannot get its lock drops nothing', async () => {
    const file = path.join(folder, 'crash.ndjson.gz');
    writeFileSync(file, 'left by a crashed run');
    const before = await state();
    // A reader holding events: the drop's lock times out, every attempt.
    const holder = await t.pool.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`SELECT count(*) FROM ${q()}.events`);
      await assert.rejects(
        t.app.events.archive({ before: '101', to: file, lockAttempts: 2, lockTimeoutMs: 100 }),
        /lock timeout/,
      );
    } finally {
      // Whatever happened, the holder ends: an open transaction would hang the cleanup.
      await holder.query('ROLLBACK');
      holder.release();
    }
    assert.ok(existsSync(file));
    // Keys of the closed partition may be gone (batched before the drop); nothing else changed.
    assert.equal(
      JSON.stringify(JSON.parse(await state()).slice(0, 3)),
      JSON.stringify(JSON.parse(before).slice(0, 3)),
    );
    const result = await t.app.events.archive({ before: '101', to: file });
    assert.equal(result.partitions.length, 1);
    assert.equal((await verifyArchive(file, [])).sha256, result.sha256);
    // The file is now recorded: never overwritten.
    await assert.rejects(
      t.app.events.archive({ before: '201', to: file }),
      /already holds archived events \(partition events_from_1/,
    );
  });

  it('a partition that changed since the file was written is not dropped', async () => {
    await assert.rejects(
      t.pool.query(`SELECT ${q()}.drop_event_partitions($1::text[], $2::bigint[])`, [
        ['events_from_101'],
        [1],
      ]),
      /holds \d+ events, the archive file 1: it changed since it was written/,
    );
    const { rows } = await t.pool.query(
      `SELECT name FROM ${q()}.event_partition_bounds WHERE name = 'events_from_101'`,
    );
    assert.equal(rows.length, 1);
    await assert.rejects(
      t.pool.query(`SELECT ${q()}.drop_event_partitions($1::text[], $2::bigint[])`, [
        ['events_overflow'],
        [0],
      ]),
      /no range partition "events_overflow"/,
    );
  });
});

describe('events archive under load', () => {
  let t: TestApp;
  before(async () => {
    t = await isolatedApp('archive_load');
    await smallPartitions(t);
  });
  after(async () => t.cleanup());

  it('loses nothing and processes nothing twice while appends and a processor run', async () => {
    const q = `"${t.schema}"`;
    await t.pool.query(appliedTable(q));
    t.app.processor(
      'counter',
      { batchSize: 30, trigger: { onAppend: { debounce: { milliseconds: 5 } } } },
      (events$, ctx) => countApplied(ctx.tx, q)(events$),
    );
    await t.app.events.retention.set({ keepDays: 1 });
    await appendSome(t, 320);
    await backdate(t, 301, 3);
    const controller = new AbortController();
    const running = t.app.run({ concurrency: 3, signal: controller.signal, pollInterval: 20 });
    const processed = async () =>
      (await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.applied`)).rows[0].n as number;
    let appending = true;
    let appended = 320;
    let result: Awaited<ReturnType<typeof t.app.events.archive>>;
    try {
      await waitFor('the processor catches up', async () => (await processed()) === 320, 90_000);
      const appender = (async () => {
        for (let round = 0; appending; round++) {
          await appendSome(t, 7, `load${round}`);
          appended += 7;
        }
      })();
      try {
        result = await t.app.events.archive({ before: '301', to: path.join(folder, 'load.ndjson.gz') });
      } finally {
        appending = false;
        await appender;
      }
      assert.deepEqual(
        result.partitions.map((p) => p.partition),
        ['events_from_1', 'events_from_101', 'events_from_201'],
      );
      await waitFor('the processor catches up again', async () => (await processed()) === appended, 90_000);
    } finally {
      controller.abort();
      await running;
    }
    const stored = (await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.events`)).rows[0].n;
    assert.equal(stored + result.events, appended);
    const twice = await t.pool.query(`SELECT count(*)::int AS n FROM ${q}.applied WHERE n <> 1`);
    assert.equal(twice.rows[0].n, 0);
  });
});

describe('cli: events archive, import, retention', () => {
  let t: TestApp;
  let env: NodeJS.ProcessEnv;
  before(async () => {
    t = await isolatedApp('archive_cli');
    await smallPartitions(t);
    await appendSome(t, 130);
    await backdate(t, 101, 3);
    await waitUntilReadable(t.pool, t.schema);
    env = { DATABASE_URL: databaseUrl(), OUTBATCH_SCHEMA: t.schema };
  });
  after(async () => t.cleanup());

  it('sets, lists and removes retention policies', async () => {
    let result = await runCli(
      ['events', 'retention', 'set', '--stream-prefix', 'order-', '--keep-days', 'forever'],
      env,
    );
    assert.equal(result.code, 0, result.stderr);
    result = await runCli(['events', 'retention', 'set', '--keep-days', '2'], env);
    assert.equal(result.code, 0, result.stderr);
    result = await runCli(['events', 'retention', 'list'], env);
    assert.match(result.stdout, /"order-"\s+\(any\)\s+forever/);
    assert.match(result.stdout, /""\s+\(any\)\s+2 days/);
    result = await runCli(['events', 'retention', 'remove', '--stream-prefix', 'order-'], env);
    assert.equal(result.code, 0, result.stderr);
    result = await runCli(['events', 'retention', 'set', '--keep-days', 'soon'], env);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /^outbatch: keep days "soon" is invalid/);
  });

  it('archives with a dry run first, then imports into another schema', async () => {
    const file = path.join(folder, 'cli.ndjson.gz');
    const original = (await t.pool.query(ROWS(t.schema, 101))).rows;
    let result = await runCli(['events', 'archive', '--before', '101', '--to', file, '--dry-run'], env);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /dry run, nothing written: would archive 100 event\(s\) from 1 partition/);
    assert.match(result.stdout, /events_from_101 stays: /);
    assert.equal(existsSync(file), false);
    result = await runCli(['events', 'archive', '--before', '101', '--to', file], env);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /archived 100 event\(s\) from 1 partition\(s\) to .*cli\.ndjson\.gz/);
    result = await runCli(['events', 'tail', '--after', '0:0'], env);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /^outbatch: reading after checkpoint "0:0" needs archived events/);
    assert.equal(result.stderr.trim().split('\n').length, 1);

    const target = uniqueSchema('cli_import');
    try {
      result = await runCli(['events', 'import', file, '--schema', target, '--archived-in', t.schema], env);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /imported 100 event\(s\) \(positions 1-100\) into schema "t_cli_import_/);
      assert.match(result.stdout, /matching its archive record/);
      assert.deepEqual((await t.pool.query(ROWS(target))).rows, original);
    } finally {
      await t.pool.query(`DROP SCHEMA IF EXISTS "${target}" CASCADE`);
    }
  });

  it('refuses bad input in one line and changes nothing', async () => {
    const bad = path.join(folder, 'bad.ndjson.gz');
    writeFileSync(
      bad,
      gzipSync(
        '{"position":1,"tx_id":"5","stream":"s","stream_version":1,"type":"T","data":1,"metadata":{},"recorded_at":"2026-01-01T00:00:00.000000Z","idempotency_key":null}\n{oops\n',
      ),
    );
    const good = path.join(folder, 'good.ndjson.gz');
    writeFileSync(
      good,
      gzipSync(
        '{"position":1,"tx_id":"5","stream":"s","stream_version":1,"type":"T","data":1,"metadata":{},"recorded_at":"2026-01-01T00:00:00.000000Z","idempotency_key":null}\n',
      ),
    );
    const notGzip = path.join(folder, 'plain.ndjson.gz');
    writeFileSync(notGzip, '{}\n');
    const target = uniqueSchema('never');
    const before = (await t.pool.query(`SELECT count(*)::int AS n FROM "${t.schema}".events`)).rows[0].n;
    for (const [args, message] of [
      [
        ['events', 'archive', '--before', 'yesterday', '--to', path.join(folder, 'x.gz')],
        /--before "yesterday" is invalid/,
      ],
      [
        ['events', 'archive', '--before', '201', '--to', '/nonexistent-folder/x.ndjson.gz'],
        /cannot be written \(ENOENT/,
      ],
      [['events', 'archive', '--before', '201'], /--to is required/],
      [['events', 'import', bad, '--schema', target], /bad\.ndjson\.gz line 2 is not an archived event/],
      [['events', 'import', notGzip, '--schema', target], /is not a gzip NDJSON archive/],
      [
        ['events', 'import', path.join(folder, 'missing.gz'), '--schema', target],
        /cannot be read \(ENOENT\)/,
      ],
      [['events', 'import', bad, '--schema', 'Not-A-Schema'], /schema name "Not-A-Schema" is invalid/],
      [
        ['events', 'import', good, '--schema', target, '--archived-in', 'nope_nope'],
        /schema "nope_nope" has no event_archives/,
      ],
    ] as const) {
      const result = await runCli([...args], env);
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr.trim(), message);
      assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
    }
    assert.equal(
      (await t.pool.query(`SELECT count(*)::int AS n FROM "${t.schema}".events`)).rows[0].n,
      before,
    );
    const made = await t.pool.query(`SELECT 1 FROM pg_namespace WHERE nspname = $1`, [target]);
    assert.equal(made.rows.length, 0);
  });
});
