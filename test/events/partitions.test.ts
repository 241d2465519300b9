/**
 * The partitioned event log (schema/029): appends, reads, streams and idempotency keys
 * across partition boundaries, partitions created ahead by the worker, and the online
 * conversion of a stored log of two million events while appenders and a processor run.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import pg from 'pg';
import { loadMigrations } from '../../src/db/migrate.js';
import { createPartitionsAhead, eventsLayout } from '../../src/events/partitioning.js';
import { unfilteredPageText } from '../../src/events/read.js';
import { createApp, createLogger } from '../../src/index.js';
import {
  appliedTable,
  countApplied,
  databaseUrl,
  isolatedApp,
  planNodeTypes,
  runCli,
  uniqueSchema,
} from '../helpers.js';
import { waitFor } from '../jobs/support.js';
import { waitUntilReadable } from './readable.js';

const pool = new pg.Pool({ connectionString: databaseUrl(), max: 8 });
const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  await pool.end();
});

/** Moves the position sequence so the next appends land just below `position`. */
async function jumpTo(schema: string, position: number) {
  await pool.query(`SELECT setval('"${schema}".events_position_seq', $1)`, [position - 1]);
}

async function partitionsOf(schema: string): Promise<string[]> {
  const { rows } = await pool.query(
    `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = '"${schema}".events'::regclass ORDER BY 1`,
  );
  return rows.map((row) => row.relname as string);
}

describe('a partitioned event log', () => {
  it('is the layout of a new schema, with partitions ready ahead', async () => {
    const t = await isolatedApp('part_new');
    cleanups.push(t.cleanup);
    assert.equal(await eventsLayout(pool, t.schema), 'partitioned');
    assert.deepEqual(await partitionsOf(t.schema), [
      'events_from_1',
      'events_from_10000000',
      'events_from_20000000',
      'events_overflow',
    ]);
    const status = await t.app.events.logStatus();
    assert.equal(status.layout, 'partitioned');
    assert.equal(status.partitions.length, 4);
    assert.equal(status.archivedThrough, null);
    // Nothing due: a second call creates nothing.
    assert.deepEqual(await createPartitionsAhead(pool, t.schema), []);
  });

  it('keeps order, stream versions and idempotency keys across partition boundaries', async () => {
    const t = await isolatedApp('part_bounds');
    cleanups.push(t.cleanup);
    const q = `"${t.schema}"`;
    await jumpTo(t.schema, 29_999_990);
    // Partitions of 100 above 30 000 000, then appends through several of them: single,
    // keyed, batched, and by COPY (1000 and more).
    await pool.query(
      `SELECT ${q}.create_event_partition(p, p + 100) FROM generate_series(30000000, 30001900, 100) p`,
    );
    const keyed = await t.app.events.append({ stream: 'a', type: 'T', data: 0, idempotencyKey: 'k-first' });
    for (let i = 1; i <= 20; i++) await t.app.events.append({ stream: 'a', type: 'T', data: i });
    await t.app.events.append(
      Array.from({ length: 50 }, (_, i) => ({ stream: `b-${i % 3}`, type: 'U', data: i })),
    );
    await t.app.events.append(
      Array.from({ length: 1200 }, (_, i) => ({ stream: `c-${i % 7}`, type: 'V', data: i })),
    );
    // The key stored partitions ago is found: the duplicate returns the stored event.
    const again = await t.app.events.append({ stream: 'a', type: 'T', data: 99, idempotencyKey: 'k-first' });
    assert.equal(again.duplicate, true);
    assert.equal(again.position, keyed.position);

    const partitions = await partitionsOf(t.schema);
    assert.ok(partitions.length >= 15, `appends spread over ${partitions.length} partitions`);
    const { rows: spread } = await pool.query(
      `SELECT tableoid::regclass::text AS partition, count(*)::int AS n FROM ${q}.events GROUP BY 1`,
    );
    assert.ok(spread.length >= 13, `events are in ${spread.length} partitions`);
    assert.equal(
      spread.find((row) => row.partition.endsWith('events_overflow')),
      undefined,
    );

    // read() walks every partition in (tx_id, position) order, nothing missing or repeated
    // (once another file's open transaction no longer holds the read horizon back).
    await waitUntilReadable(pool, t.schema);
    const seen: bigint[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await t.app.events.read({ ...(after && { after }), limit: 97 });
      seen.push(...page.events.map((e) => e.position));
      if (page.events.length === 0) break;
      after = page.checkpoint;
    }
    assert.equal(seen.length, 1 + 20 + 50 + 1200);
    assert.equal(new Set(seen).size, seen.length);
    // Stream versions stay contiguous across partitions.
    const { rows: versions } = await pool.query(
      `SELECT stream, count(*)::int AS n, max(stream_version)::int AS top FROM ${q}.events GROUP BY stream`,
    );
    for (const row of versions) assert.equal(row.top, row.n, `stream ${row.stream}`);
    const stream = await t.app.events.stream('c-3');
    assert.deepEqual(
      stream.map((e) => e.streamVersion),
      Array.from({ length: stream.length }, (_, i) => i + 1),
    );
  });

  it('stores one event for two transactions racing with the same key on either side of a boundary', async () => {
    const t = await isolatedApp('part_race');
    cleanups.push(t.cleanup);
    const q = `"${t.schema}"`;
    await jumpTo(t.schema, 9_999_999);
    const first = await pool.connect();
    try {
      await first.query('BEGIN');
      // The first transaction's event takes the last position of events_from_1 …
      const held = await t.app.events.append(
        { stream: 's', type: 'T', data: 1, idempotencyKey: 'race' },
        { client: first },
      );
      assert.equal(held.position, 9_999_999n);
      // … the second, while the first is open, lands in events_from_10000000, where that
      // partition's own index cannot see the first: event_keys does, and makes it wait.
      const second = t.app.events.append({ stream: 'other', type: 'T', data: 2, idempotencyKey: 'race' });
      await new Promise((resolve) => setTimeout(resolve, 200));
      await first.query('COMMIT');
      const stored = await second;
      assert.equal(stored.duplicate, true);
      assert.equal(stored.position, 9_999_999n);
    } finally {
      first.release();
    }
    const { rows } = await pool.query(
      `SELECT count(*)::int AS n FROM ${q}.events WHERE idempotency_key = 'race'`,
    );
    assert.equal(rows[0].n, 1);
  });

  it('reads through the newest large transaction by merging the partitions, not sorting what is left of them', async () => {
    const t = await isolatedApp('part_plan');
    cleanups.push(t.cleanup);
    const q = `"${t.schema}"`;
    await jumpTo(t.schema, 30_000_000);
    await pool.query(
      `SELECT ${q}.create_event_partition(p, p + 100) FROM generate_series(30000000, 30080000, 20000) p`,
    );
    // 60,000 events in one transaction, the newest ANALYZE sees: to the planner, little is
    // left after a checkpoint inside it. With the checkpoint in plain sight it sorted all
    // that was left of every partition for each page (300 ms a page at a million events).
    await t.app.events.append(
      Array.from({ length: 60_000 }, (_, i) => ({ stream: `s-${i % 5}`, type: 'T', data: i })),
    );
    await pool.query(`ANALYZE ${q}.events`);
    const { rows: middle } = await pool.query(
      `SELECT tx_id::text AS tx, position::text FROM ${q}.events WHERE position = 30030000`,
    );
    const client = await pool.connect();
    try {
      await client.query(`PREPARE page AS ${unfilteredPageText(t.schema, 1000)}`);
      const { rows: explained } = await client.query(
        `EXPLAIN (FORMAT JSON) EXECUTE page('${middle[0].tx}', 30030000)`,
      );
      const nodes = planNodeTypes(explained);
      assert.ok(nodes.includes('Merge Append'), `plan: ${nodes.join(' > ')}`);
      assert.ok(!nodes.includes('Sort'), `plan: ${nodes.join(' > ')}`);
    } finally {
      client.release();
    }
    // And the pages hold what they should: the second half of the batch, in order.
    const page = await t.app.events.read({ after: `${middle[0].tx}:30030000`, limit: 1000 });
    assert.deepEqual(
      page.events.map((e) => Number(e.position)),
      Array.from({ length: 1000 }, (_, i) => 30_030_001 + i),
    );
  });

  it('lands appends in events_overflow, never failing them, when partitions fell behind; the worker catches up above them', async () => {
    const t = await isolatedApp('part_overflow');
    cleanups.push(t.cleanup);
    const q = `"${t.schema}"`;
    await jumpTo(t.schema, 30_000_000); // above every partition made ahead
    const late = await t.app.events.append([{ stream: 's', type: 'T', data: 1 }]);
    const { rows } = await pool.query(
      `SELECT tableoid::regclass::text AS p FROM ${q}.events WHERE position = $1`,
      [late[0]!.position.toString()],
    );
    assert.match(rows[0].p, /events_overflow$/);
    assert.equal((await t.app.events.logStatus()).overflowEvents, 1);
    const env = { DATABASE_URL: databaseUrl(), OUTBATCH_SCHEMA: t.schema };
    const behind = await runCli(['doctor'], env);
    assert.equal(behind.code, 1);
    assert.match(behind.stdout, /FAIL {2}event log +appends are past the last partition .* run a worker/);
    // The worker's pass makes partitions clear of any append in flight: the positions up to
    // them go on landing in events_overflow, without an error.
    const created = await createPartitionsAhead(pool, t.schema);
    assert.ok(created.length >= 2);
    const start = Number(created[0]!.replace('events_from_', ''));
    assert.ok(start >= 30_100_000, `the first new partition starts at ${start}`);
    await t.app.events.append({ stream: 's', type: 'T', data: 2 });
    await jumpTo(t.schema, start);
    const next = await t.app.events.append({ stream: 's', type: 'T', data: 3 });
    const { rows: where } = await pool.query(
      `SELECT tableoid::regclass::text AS p FROM ${q}.events WHERE position = $1`,
      [next.position.toString()],
    );
    assert.match(where[0].p, new RegExp(`${created[0]}$`));
    assert.equal((await t.app.events.logStatus()).overflowEvents, 2);
    const caughtUp = await runCli(['doctor'], env);
    assert.match(
      caughtUp.stdout,
      /ok {4}event log +\d+ partitions, ready up to position \d+ .*2 events in events_overflow/,
    );
    await waitUntilReadable(pool, t.schema);
    assert.deepEqual(
      (await t.app.events.read({})).events.map((e) => e.data),
      [1, 2, 3],
    );
  });

  it('is converted online from a stored log of two million events while appenders and a processor run', async () => {
    const schema = uniqueSchema('part_convert');
    const q = `"${schema}"`;
    const app = createApp({ databaseUrl: databaseUrl(), schema, logger: createLogger({ level: 'silent' }) });
    cleanups.push(async () => {
      await app.close();
      await pool.query(`DROP SCHEMA IF EXISTS ${q} CASCADE`);
    });
    // An install from before 029, with events stored: the migration leaves them as they are.
    await migrateUpTo(schema, 28);
    await pool.query(
      `INSERT INTO ${q}.events (stream, stream_version, type, data, idempotency_key)
       SELECT 'legacy-' || (i % 1000), i / 1000 + 1, CASE WHEN i % 50 = 0 THEN 'Counted' ELSE 'Old' END,
              jsonb_build_object('i', i), CASE WHEN i % 100000 = 0 THEN 'legacy-key-' || i END
       FROM generate_series(0, 1999999) i;
       INSERT INTO ${q}.streams (stream, version)
       SELECT 'legacy-' || s, 2000 FROM generate_series(0, 999) s;
       ANALYZE ${q}.events`,
    );
    await app.migrate();
    assert.equal(await eventsLayout(pool, schema), 'unpartitioned');
    // Partitions of 1000 after the conversion, made 200 ahead: the worker's pass keeps up
    // with two appenders without any append landing in events_overflow.
    await pool.query(`UPDATE ${q}.event_log SET partitions_ahead = 200`);

    await pool.query(appliedTable(q));
    app.processor(
      'counter',
      { types: ['Counted'], trigger: { onAppend: { debounce: { milliseconds: 20 } } } },
      (events$, ctx) => events$.pipe(countApplied(ctx.tx, q)),
    );
    const stop = new AbortController();
    const worker = app.run({
      concurrency: 2,
      signal: stop.signal,
      pollInterval: 50,
      recoverInterval: { milliseconds: 200 },
    });

    // Two appenders the whole time: singles, keyed ones (some repeated), batches and COPY.
    let appending = true;
    let appended = 0;
    const failures: unknown[] = [];
    const appender = async (id: number) => {
      for (let round = 0; appending; round++) {
        try {
          if (round % 10 === 9) {
            const batch = Array.from({ length: 1000 }, (_, i) => ({
              stream: `new-${id}-${i % 5}`,
              type: 'Counted',
              data: i,
            }));
            const stored = await app.events.append(batch);
            appended += stored.length;
          } else {
            const key = round % 3 === 0 ? `key-${id}-${Math.floor(round / 6)}` : undefined;
            const stored = await app.events.append({
              stream: `new-${id}`,
              type: 'Counted',
              data: round,
              ...(key && { idempotencyKey: key }),
            });
            if (!stored.duplicate) appended += 1;
          }
        } catch (error) {
          failures.push(error);
          if (failures.length >= 100) return; // failing every time: the assertion below says why
        }
      }
    };
    const appenders = [appender(1), appender(2)];
    // A failed assertion below must not leave the appenders and the worker going: they kept
    // the file's process alive and the server busy for half an hour once (the Node 24 run).
    cleanups.push(async () => {
      appending = false;
      stop.abort();
      await Promise.allSettled([...appenders, worker]);
    });
    await new Promise((resolve) => setTimeout(resolve, 500));

    const converted = await runCli(['events', 'partition', '--size', '1000', '--lock-timeout', '500'], {
      DATABASE_URL: databaseUrl(),
      OUTBATCH_SCHEMA: schema,
    });
    assert.equal(converted.code, 0, converted.stderr);
    assert.match(converted.stdout, /events is partitioned by position/);
    assert.match(converted.stderr, /checking that the \d+ stored events are below position/);
    assert.equal(await eventsLayout(pool, schema), 'partitioned');
    // The old table has room above its rows for the appends during the scan (a tenth of
    // it): skip to its end, so that the appends go on into several new partitions.
    const { rows: first } = await pool.query(
      `SELECT upper FROM ${q}.event_partition_bounds WHERE name = 'events_from_1'`,
    );
    await jumpTo(schema, Number(first[0].upper) - 500);
    const filled = async () =>
      (await pool.query(`SELECT count(DISTINCT tableoid)::int AS n FROM ${q}.events`)).rows[0].n as number;
    await waitFor('appends to fill several new partitions', async () => (await filled()) >= 5, 60_000);
    appending = false;
    await Promise.all(appenders);
    assert.deepEqual(failures, []);

    const { rows: totals } = await pool.query(
      `SELECT count(*)::int AS n, count(DISTINCT position)::int AS distinct_positions,
              count(*) FILTER (WHERE type = 'Counted')::int AS counted FROM ${q}.events`,
    );
    assert.equal(totals[0].n, 2_000_000 + appended);
    assert.equal(totals[0].distinct_positions, totals[0].n);
    // Every Counted event applied exactly once, across the old table and the new partitions.
    await waitFor(
      'the processor to catch up',
      async () =>
        Number((await pool.query(`SELECT count(*) FROM ${q}.applied`)).rows[0].count) === totals[0].counted,
      300_000,
    );
    const { rows: twice } = await pool.query(`SELECT count(*)::int AS n FROM ${q}.applied WHERE n <> 1`);
    assert.equal(twice[0].n, 0);

    // Replay across the old table and the new partitions: a version rebuilt beside the live
    // one applies every Counted event once more (n = 2), none twice.
    const { version } = await app.processors.rebuild('counter', { reason: 'partitions test' });
    await waitFor(
      'the rebuilt version to catch up',
      async () => {
        const status = (await app.processors.status('counter')).find((s) => s.version === version);
        return status?.lagEvents === 0 && status.state === 'idle';
      },
      300_000,
    );
    const { rows: rebuilt } = await pool.query(
      `SELECT count(*) FILTER (WHERE n = 2)::int AS twice, count(*) FILTER (WHERE n <> 2)::int AS other FROM ${q}.applied`,
    );
    assert.deepEqual(rebuilt[0], { twice: totals[0].counted, other: 0 });
    stop.abort();
    await worker;
    // Re-drive a range that starts in the old table and ends in the new partitions.
    const from = 1_999_000;
    const { rows: inRange } = await pool.query(
      `SELECT count(*)::int AS n FROM ${q}.events WHERE type = 'Counted' AND position >= $1`,
      [from],
    );
    const redriven = await app.events.redrive({
      from: String(from),
      types: ['Counted'],
      task: 'recount',
      batch: 1000,
    });
    assert.equal(redriven.events, inRange[0].n);
    assert.equal(redriven.deferred, Math.ceil(inRange[0].n / 1000));
    // Keys from before the conversion still answer as duplicates.
    const legacy = await app.events.append({
      stream: 'x',
      type: 'T',
      data: 0,
      idempotencyKey: 'legacy-key-100000',
    });
    assert.equal(legacy.duplicate, true);
    assert.equal(legacy.position, 100_001n);
    const status = await runCli(['events', 'partitions'], {
      DATABASE_URL: databaseUrl(),
      OUTBATCH_SCHEMA: schema,
    });
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /events_from_1 +\[1, \d+\)/);
    // Once is enough: a second run says so.
    const again = await runCli(['events', 'partition'], {
      DATABASE_URL: databaseUrl(),
      OUTBATCH_SCHEMA: schema,
    });
    assert.match(again.stdout, /already partitioned/);
  });

  it('refuses a second conversion while one runs, changing nothing', async () => {
    const schema = uniqueSchema('part_twice');
    await migrateUpTo(schema, 28);
    const app = createApp({ databaseUrl: databaseUrl(), schema });
    cleanups.push(async () => {
      await app.close();
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    });
    await pool.query(
      `INSERT INTO "${schema}".events (stream, stream_version, type, data) VALUES ('s', 1, 'T', '{}')`,
    );
    await app.migrate();
    // The lock a running conversion holds, taken here as if one were running.
    const running = await pool.connect();
    try {
      await running.query('SELECT pg_advisory_lock(hashtext($1))', [`${schema}.events.partition`]);
      await assert.rejects(
        app.events.partition(),
        /another "outbatch events partition" is converting schema "t_part_twice_\w+": wait for it to finish/,
      );
      assert.equal(await eventsLayout(pool, schema), 'unpartitioned');
      const { rows } = await pool.query(
        `SELECT count(*)::int AS n FROM pg_constraint
         WHERE conname = 'events_partition_bound' AND conrelid = '"${schema}".events'::regclass`,
      );
      assert.equal(rows[0].n, 0, 'no bound CHECK was added');
    } finally {
      await running.query('SELECT pg_advisory_unlock_all()');
      running.release();
    }
    assert.equal((await app.events.partition()).converted, true);
    assert.equal(await eventsLayout(pool, schema), 'partitioned');
  });

  it('refuses a conversion by a role that does not own events in one line, leaving no check', async () => {
    const schema = uniqueSchema('part_owner');
    const role = `${schema}_role`;
    await migrateUpTo(schema, 28);
    await pool.query(
      `INSERT INTO "${schema}".events (stream, stream_version, type, data) VALUES ('s', 1, 'T', '{}')`,
    );
    const owner = createApp({ databaseUrl: databaseUrl(), schema });
    await owner.migrate();
    await owner.close();
    // A password too: the embedded servers of the version matrix ask for one.
    await pool.query(`CREATE ROLE "${role}" LOGIN PASSWORD 'not-the-owner'`);
    await pool.query(
      `GRANT USAGE ON SCHEMA "${schema}" TO "${role}";
       GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "${schema}" TO "${role}";
       GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA "${schema}" TO "${role}"`,
    );
    const url = new URL(databaseUrl());
    url.username = role;
    url.password = 'not-the-owner';
    const app = createApp({ databaseUrl: url.toString(), schema });
    cleanups.push(async () => {
      await app.close();
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await pool.query(`DROP OWNED BY "${role}"; DROP ROLE IF EXISTS "${role}"`);
    });
    await assert.rejects(app.events.partition(), (error: Error) => {
      assert.match(
        error.message,
        /^events was not converted: .*; run it as the owner of "t_part_owner_\w+"\.events/,
      );
      assert.doesNotMatch(error.message, /\n/);
      return true;
    });
    assert.equal(await eventsLayout(pool, schema), 'unpartitioned');
    const { rows } = await pool.query(
      `SELECT count(*)::int AS n FROM pg_constraint
       WHERE conname = 'events_partition_bound' AND conrelid = '"${schema}".events'::regclass`,
    );
    assert.equal(rows[0].n, 0);
  });

  it('refuses a bad partition size in one line, changing nothing', async () => {
    const t = await isolatedApp('part_bad');
    cleanups.push(t.cleanup);
    await assert.rejects(
      t.app.events.setPartitionSize(5),
      /partition size 5 is invalid: use a whole number of events from 100/,
    );
    const cli = await runCli(['events', 'partition', '--size', 'lots'], {
      DATABASE_URL: databaseUrl(),
      OUTBATCH_SCHEMA: t.schema,
    });
    assert.equal(cli.code, 2);
    assert.match(cli.stderr, /--size/);
    assert.equal((await t.app.events.logStatus()).partitionSize, 10_000_000);
  });
});

/** A schema as an install of `version` left it: the numbered files up to it, recorded as applied. */
async function migrateUpTo(schema: string, version: number) {
  const q = `"${schema}"`;
  const client = await pool.connect();
  try {
    await client.query(`CREATE SCHEMA ${q}; SET search_path TO ${q}`);
    await client.query(
      'CREATE TABLE migrations (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())',
    );
    for (const migration of (await loadMigrations()).filter((m) => m.version <= version)) {
      await client.query(migration.sql);
      await client.query('INSERT INTO migrations (version, name, checksum) VALUES ($1, $2, $3)', [
        migration.version,
        migration.name,
        migration.checksum,
      ]);
    }
  } finally {
    await client.query('RESET search_path');
    client.release();
  }
}
