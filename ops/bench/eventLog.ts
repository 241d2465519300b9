/**
 * The partitioned log against the single table, at size: the same appends and reads on a
 * log of --events events (10 000 000 by default) stored unpartitioned (as before migration
 * 029) and partitioned in partitions of --partition-size (2 000 000: five of them), in one
 * run on one server.
 *
 *   DATABASE_URL=postgres://… npx tsx ops/bench/eventLog.ts [--events 10000000] [--partition-size 2000000]
 *
 * Both schemas are filled by INSERT … SELECT (the same rows), vacuumed and analyzed, then
 * each case runs on both, interleaved, best of three rounds. Reads start at the middle of
 * the log (a page there merges every partition's index scan) and read 1 000 000 events.
 * Results go to ops/bench/RESULTS.md ("Event log at 10M") by hand. Schemas are dropped after.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { createApp } from '../../src/app.js';
import { loadMigrations } from '../../src/db/migrate.js';
import { createLogger } from '../../src/log.js';

const url = process.env.DATABASE_URL;
if (!url) {
  process.stderr.write('set DATABASE_URL (the benchmark never starts the embedded server)\n');
  process.exit(2);
}
const flag = (name: string, fallback: number) => {
  const at = process.argv.indexOf(name);
  return at > 0 ? Number(process.argv[at + 1]) : fallback;
};
const EVENTS = flag('--events', 10_000_000);
const PARTITION_SIZE = flag('--partition-size', 2_000_000);
const SINGLES = 2000;
const BULK = 100_000;
const READ = Math.min(1_000_000, Math.floor(EVENTS / 4));
const ROUNDS = 3;

const pool = new pg.Pool({ connectionString: url, max: 4 });
const silent = createLogger({ level: 'silent' });
const tag = randomBytes(3).toString('hex');
const layouts = ['single table', 'partitioned'] as const;
const schemas = { 'single table': `bench_log_single_${tag}`, partitioned: `bench_log_parts_${tag}` };
const apps = Object.fromEntries(
  layouts.map((layout) => [
    layout,
    createApp({ databaseUrl: url, schema: schemas[layout], logger: silent, pool: { max: 4 } }),
  ]),
) as Record<(typeof layouts)[number], ReturnType<typeof createApp>>;

/** The schema as an install from before 029 had it: events one table. */
async function migrateUnpartitioned(schema: string) {
  const client = await pool.connect();
  try {
    await client.query(`CREATE SCHEMA "${schema}"; SET search_path TO "${schema}"`);
    await client.query(
      'CREATE TABLE migrations (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())',
    );
    for (const m of (await loadMigrations()).filter((m) => m.version <= 28)) {
      await client.query(m.sql);
      await client.query('INSERT INTO migrations (version, name, checksum) VALUES ($1, $2, $3)', [
        m.version,
        m.name,
        m.checksum,
      ]);
    }
    // One event, so 029 leaves the table as it is (it converts only an empty one).
    await client.query(
      `INSERT INTO events (stream, stream_version, type, data) VALUES ('seed', 1, 'Seed', '{}')`,
    );
    await client.query(`INSERT INTO streams VALUES ('seed', 1)`);
  } finally {
    await client.query('RESET search_path');
    client.release();
  }
}

/** The same EVENTS rows in both: 10 000 streams, a few types, a realistic payload. */
async function fill(schema: string) {
  const q = `"${schema}"`;
  const chunk = 1_000_000;
  for (let from = 0; from < EVENTS; from += chunk) {
    await pool.query(
      `INSERT INTO ${q}.events (stream, stream_version, type, data)
       SELECT 'order-' || (i % 10000), i / 10000 + 1, (ARRAY['OrderPlaced','OrderPaid','OrderShipped'])[1 + i % 3],
              jsonb_build_object('orderId', 'o-' || i, 'total', 42.5, 'currency', 'EUR', 'items', jsonb_build_array(jsonb_build_object('sku', 'a-1', 'qty', 2)))
       FROM generate_series($1::int8, $2::int8) i`,
      [from, Math.min(EVENTS, from + chunk) - 1],
    );
    process.stdout.write(`\r${schema}: ${Math.min(EVENTS, from + chunk)}/${EVENTS} events`);
  }
  await pool.query(
    `INSERT INTO ${q}.streams (stream, version) SELECT 'order-' || s, ${Math.ceil(EVENTS / 10000)} FROM generate_series(0, 9999) s
     ON CONFLICT (stream) DO UPDATE SET version = excluded.version`,
  );
  process.stdout.write('\n');
  await pool.query(`VACUUM ANALYZE ${q}.events`);
  for (const p of (
    await pool.query(
      `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = '${q}.events'::regclass`,
    )
  ).rows) {
    await pool.query(`VACUUM ANALYZE ${q}."${p.relname}"`);
  }
}

let round = 0;
type Case = { name: string; events: number; run: (layout: (typeof layouts)[number]) => Promise<void> };

const cases: Case[] = [
  {
    name: 'append(event), one per transaction',
    events: SINGLES,
    async run(layout) {
      const app = apps[layout];
      for (let i = 0; i < SINGLES; i++) {
        await app.events.append({
          stream: `order-${i % 10000}`,
          type: 'OrderPlaced',
          data: { i, total: 42.5 },
        });
      }
    },
  },
  {
    name: 'append(10k events) [COPY]',
    events: BULK,
    async run(layout) {
      for (let base = 0; base < BULK; base += 10_000) {
        await apps[layout].events.append(
          Array.from({ length: 10_000 }, (_, k) => ({
            stream: `order-${(base + k) % 10000}`,
            type: 'OrderPaid',
            data: { i: base + k },
          })),
        );
      }
    },
  },
  {
    name: 'append(10k keyed) [SQL fn]',
    events: BULK,
    async run(layout) {
      const r = round;
      for (let base = 0; base < BULK; base += 10_000) {
        await apps[layout].events.append(
          Array.from({ length: 10_000 }, (_, k) => ({
            stream: `order-${(base + k) % 10000}`,
            type: 'OrderPaid',
            data: { i: base + k },
            idempotencyKey: `${layout}-${r}-${base + k}`,
          })),
        );
      }
    },
  },
  {
    name: `read() ${READ} events from the middle, pages of 1000`,
    events: READ,
    async run(layout) {
      const app = apps[layout];
      const q = `"${schemas[layout]}"`;
      const middle = (
        await pool.query(`SELECT tx_id::text AS tx, position::text FROM ${q}.events WHERE position = $1`, [
          Math.floor(EVENTS / 2) - Math.floor(READ / 2),
        ])
      ).rows[0];
      let after = `${middle.tx}:${middle.position}`;
      let seen = 0;
      while (seen < READ) {
        const page = await app.events.read({ after, limit: 1000 });
        seen += page.events.length;
        after = page.checkpoint;
        if (page.events.length === 0) throw new Error('read() ran out of events');
      }
    },
  },
];

try {
  const server = (await pool.query(`SELECT current_setting('server_version') AS v`)).rows[0].v;
  process.stdout.write(
    `PostgreSQL ${server}; a log of ${EVENTS} events, partitions of ${PARTITION_SIZE}; best of ${ROUNDS} interleaved rounds\n`,
  );
  await migrateUnpartitioned(schemas['single table']);
  await apps['single table'].migrate();
  await apps.partitioned.migrate();
  const parts = `"${schemas.partitioned}"`;
  // Partitions of PARTITION_SIZE from the start: the migration made 10M ones; replace them.
  await pool.query(
    `DROP TABLE ${parts}.events_from_1, ${parts}.events_from_10000000, ${parts}.events_from_20000000`,
  );
  await pool.query(`UPDATE ${parts}.event_log SET partition_size = $1, partitions_ahead = 2`, [
    PARTITION_SIZE,
  ]);
  await pool.query(
    `SELECT ${parts}.create_event_partition(p, p + $1) FROM generate_series(1::int8, $2::int8, $1::int8) p`,
    [PARTITION_SIZE, EVENTS + 3 * PARTITION_SIZE],
  );
  for (const layout of layouts) await fill(schemas[layout]);
  const count = (await pool.query(`SELECT count(DISTINCT tableoid)::int AS n FROM ${parts}.events`)).rows[0]
    .n;
  process.stdout.write(`the partitioned log spans ${count} partitions\n`);

  const best = new Map<string, number>();
  for (round = 0; round < ROUNDS; round++) {
    for (const c of cases) {
      for (const layout of round % 2 === 0 ? layouts : [...layouts].reverse()) {
        const start = process.hrtime.bigint();
        await c.run(layout);
        const rate = c.events / (Number(process.hrtime.bigint() - start) / 1e9);
        const key = `${c.name}|${layout}`;
        best.set(key, Math.max(best.get(key) ?? 0, rate));
      }
    }
  }
  process.stdout.write(
    `\n${'case'.padEnd(52)} ${'single table'.padStart(13)} ${'partitioned'.padStart(13)}  ratio\n`,
  );
  for (const c of cases) {
    const single = best.get(`${c.name}|single table`)!;
    const parted = best.get(`${c.name}|partitioned`)!;
    process.stdout.write(
      `${c.name.padEnd(52)} ${Math.round(single).toString().padStart(13)} ${Math.round(parted).toString().padStart(13)}  ${(parted / single).toFixed(2)}\n`,
    );
  }
} finally {
  for (const layout of layouts) {
    await apps[layout].close();
    await pool.query(`DROP SCHEMA IF EXISTS "${schemas[layout]}" CASCADE`).catch(() => {});
  }
  await pool.end();
}
