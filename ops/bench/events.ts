/**
 * Events benchmark: outbatch append/read against raw PostgreSQL in one run, one server.
 *
 *   DATABASE_URL=postgres://… npx tsx ops/bench/events.ts [--scale 1] [--log 10000000]
 *
 * `--log N` fills the log with N events first (INSERT … SELECT, as eventLog.ts does), so the
 * appends land on a log of that size and the reads read all of it (best of three rounds
 * then: a round reads N events twice).
 *
 * Runs in a schema of its own (dropped after). Every figure is events per second, the
 * best of five interleaved rounds (reads: the two readers take pages in turn, see
 * readInTurn); ratios compare with the targets. Results go to
 * ops/bench/RESULTS.md by hand (see "## Events" there).
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { createApp } from '../../src/app.js';
import { START_CHECKPOINT } from '../../src/events/checkpoint.js';

const url = process.env.DATABASE_URL;
if (!url) {
  process.stderr.write('set DATABASE_URL (the benchmark never starts the embedded server)\n');
  process.exit(2);
}
const scaleIndex = process.argv.indexOf('--scale');
const scale = scaleIndex > 0 ? Number(process.argv[scaleIndex + 1]) : 1;
const SINGLES = Math.round(1500 * scale);
const BULK_TOTAL = Math.round(100_000 * scale);
const logIndex = process.argv.indexOf('--log');
const LOG = logIndex > 0 ? Number(process.argv[logIndex + 1]) : 0;
if (!Number.isSafeInteger(LOG) || LOG < 0)
  throw new Error(`--log must be a whole number, not "${process.argv[logIndex + 1]}"`);
const ROUNDS = 5;
const READ_ROUNDS = LOG > 0 ? 3 : ROUNDS;

const schema = `bench_events_${randomBytes(3).toString('hex')}`;
const q = `"${schema}"`;
const app = createApp({ databaseUrl: url, schema, pool: { max: 4 } });
const pool = new pg.Pool({ connectionString: url, max: 2 });

const data = (i: number) => ({
  orderId: `o-${i}`,
  total: 42.5,
  currency: 'EUR',
  items: [{ sku: 'a-1', qty: 2 }],
});
const dataJson = (i: number) => JSON.stringify(data(i));
let tag = 0; // keeps streams unique across rounds

type Case = { name: string; events: () => number; run: () => Promise<void> };

/** One figure's line: the case's name and its rate. */
function printRate(name: string, rate: number): void {
  process.stdout.write(`${name.padEnd(44)} ${Math.round(rate).toString().padStart(9)} events/s\n`);
}

/**
 * Runs the cases interleaved, round after round, and keeps each case's best rate: the
 * server is shared, and interleaving spreads its noise over all cases alike.
 */
async function measure(cases: Case[], rounds = ROUNDS): Promise<number[]> {
  const rates = cases.map(() => 0);
  for (let round = 0; round < rounds; round++) {
    for (const [i, c] of cases.entries()) {
      const start = process.hrtime.bigint();
      await c.run();
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      rates[i] = Math.max(rates[i]!, c.events() / seconds);
    }
  }
  for (const [i, c] of cases.entries()) printRate(c.name, rates[i]!);
  return rates;
}

// --- writes -----------------------------------------------------------------------------

/**
 * Stream and version of row i in one raw case: a fresh stream per row (version 1), or, with
 * `cycle`, the rows outbatch writes — streams cycling over `cycle`, versions 1, 2, 3… counted
 * here. The second is the like-for-like baseline: the (stream, stream_version) index then
 * takes inserts where outbatch's do, not only at its right edge.
 */
function rawRows(prefix: string, cycle?: number): (i: number) => [string, number] {
  const t = tag++;
  const versions = new Map<string, number>();
  return (i) => {
    if (cycle === undefined) return [`${prefix}-${t}-${i}`, 1];
    const stream = `${prefix}-${t}-${i % cycle}`;
    const version = (versions.get(stream) ?? 0) + 1;
    versions.set(stream, version);
    return [stream, version];
  };
}

async function rawSingle(cycle?: number) {
  const client = await pool.connect();
  const row = rawRows(cycle === undefined ? 'raw1' : 'raw1s', cycle);
  try {
    for (let i = 0; i < SINGLES; i++) {
      await client.query(
        `INSERT INTO ${q}.events (stream, stream_version, type, data) VALUES ($1, $2, 'OrderPlaced', $3)`,
        [...row(i), dataJson(i)],
      );
    }
  } finally {
    client.release();
  }
}

async function rawMultiRow() {
  const client = await pool.connect();
  const t = tag++;
  try {
    for (let base = 0; base < BULK_TOTAL; base += 1000) {
      const values: string[] = [];
      const params: unknown[] = [];
      for (let i = base; i < base + 1000; i++) {
        params.push(`rawm-${t}-${i}`, dataJson(i));
        values.push(`($${params.length - 1}, 1, 'OrderPlaced', $${params.length})`);
      }
      await client.query(
        `INSERT INTO ${q}.events (stream, stream_version, type, data) VALUES ${values.join(',')}`,
        params,
      );
    }
  } finally {
    client.release();
  }
}

async function rawCopy(cycle?: number) {
  const client = await pool.connect();
  const row = rawRows(cycle === undefined ? 'rawc' : 'rawcs', cycle);
  try {
    for (let base = 0; base < BULK_TOTAL; base += 10_000) {
      const lines: string[] = [];
      // COPY text format: JSON has no tabs or newlines here; backslashes must be doubled.
      for (let i = base; i < base + 10_000; i++) {
        const [stream, version] = row(i);
        lines.push(`${stream}\t${version}\tOrderPlaced\t${dataJson(i).replace(/\\/g, '\\\\')}\n`);
      }
      await pipeline(
        Readable.from([lines.join('')]),
        client.query(copyFrom(`COPY ${q}.events (stream, stream_version, type, data) FROM STDIN`)),
      );
    }
  } finally {
    client.release();
  }
}

async function outbatchSingle() {
  const t = tag++;
  for (let i = 0; i < SINGLES; i++) {
    await app.events.append({ stream: `ob1-${t}-${i % 100}`, type: 'OrderPlaced', data: data(i) });
  }
}

async function outbatchBulk() {
  const t = tag++;
  for (let base = 0; base < BULK_TOTAL; base += 10_000) {
    const batch = Array.from({ length: 10_000 }, (_, k) => ({
      stream: `obb-${t}-${(base + k) % 1000}`,
      type: 'OrderPlaced',
      data: data(base + k),
    }));
    await app.events.append(batch);
  }
}

// The SQL function, as a service in another language would call it.
async function sqlSingle() {
  const client = await pool.connect();
  const t = tag++;
  try {
    for (let i = 0; i < SINGLES; i++) {
      await client.query(`SELECT * FROM ${q}.append_events($1)`, [
        JSON.stringify([{ stream: `sql1-${t}-${i % 100}`, type: 'OrderPlaced', data: data(i) }]),
      ]);
    }
  } finally {
    client.release();
  }
}

async function sqlBulk() {
  const client = await pool.connect();
  const t = tag++;
  try {
    for (let base = 0; base < BULK_TOTAL; base += 10_000) {
      const batch = Array.from({ length: 10_000 }, (_, k) => ({
        stream: `sqlb-${t}-${(base + k) % 1000}`,
        type: 'OrderPlaced',
        data: data(base + k),
      }));
      await client.query(`SELECT * FROM ${q}.append_events($1)`, [JSON.stringify(batch)]);
    }
  } finally {
    client.release();
  }
}

// The floor under any appender that must NOTIFY once per transaction.
async function rawSingleNotify() {
  const client = await pool.connect();
  const t = tag++;
  try {
    for (let i = 0; i < SINGLES; i++) {
      await client.query(
        `WITH ins AS (INSERT INTO ${q}.events (stream, stream_version, type, data) VALUES ($1, 1, 'OrderPlaced', $2) RETURNING position)
         SELECT position, pg_notify('${schema}_events', '') FROM ins`,
        [`rawn-${t}-${i}`, dataJson(i)],
      );
    }
  } finally {
    client.release();
  }
}

async function outbatchBulkKeyed() {
  const t = tag++;
  for (let base = 0; base < BULK_TOTAL; base += 10_000) {
    const batch = Array.from({ length: 10_000 }, (_, k) => ({
      stream: `obk-${t}-${(base + k) % 1000}`,
      type: 'OrderPlaced',
      data: data(base + k),
      idempotencyKey: `obk-${t}-${base + k}`,
    }));
    await app.events.append(batch);
  }
}

// --- reads ------------------------------------------------------------------------------

/**
 * Both readers over the whole log, page by page in turn (an outbatch page, then a raw one),
 * each page timed alone: the two meet the same cache and the same neighbours on this shared
 * machine. Read one after the other, a minute each at 13M events, the two figures came from
 * different minutes and the ratio moved by a third between runs of the same code.
 */
async function readInTurn(): Promise<{ outbatch: number; raw: number; events: number }> {
  const client = await pool.connect();
  let after = START_CHECKPOINT;
  let last = '0';
  let obSeconds = 0;
  let rawSeconds = 0;
  let obEvents = 0;
  let rawEvents = 0;
  let obDone = false;
  let rawDone = false;
  try {
    while (!obDone || !rawDone) {
      if (!obDone) {
        const start = process.hrtime.bigint();
        const page = await app.events.read({ after, limit: 1000 });
        obSeconds += Number(process.hrtime.bigint() - start) / 1e9;
        obEvents += page.events.length;
        after = page.checkpoint;
        obDone = page.caughtUp;
      }
      if (!rawDone) {
        const start = process.hrtime.bigint();
        const { rows } = await client.query(
          `SELECT * FROM ${q}.events WHERE position > $1 ORDER BY position LIMIT 1000`,
          [last],
        );
        rawSeconds += Number(process.hrtime.bigint() - start) / 1e9;
        rawEvents += rows.length;
        if (rows.length > 0) last = rows.at(-1).position;
        rawDone = rows.length < 1000;
      }
    }
  } finally {
    client.release();
  }
  if (obEvents !== rawEvents) throw new Error(`read() saw ${obEvents} events, the raw scan ${rawEvents}`);
  return { outbatch: obEvents / obSeconds, raw: rawEvents / rawSeconds, events: obEvents };
}

// --- run --------------------------------------------------------------------------------

/** The log filled to LOG events before anything is measured (streams of their own). */
async function prefill() {
  const chunk = 1_000_000;
  for (let from = 0; from < LOG; from += chunk) {
    await pool.query(
      `INSERT INTO ${q}.events (stream, stream_version, type, data)
       SELECT 'prefill-' || (i % 10000), i / 10000 + 1, 'OrderPlaced',
              jsonb_build_object('orderId', 'o-' || i, 'total', 42.5, 'currency', 'EUR',
                                 'items', jsonb_build_array(jsonb_build_object('sku', 'a-1', 'qty', 2)))
       FROM generate_series($1::int8, $2::int8) i`,
      [from, Math.min(LOG, from + chunk) - 1],
    );
    process.stderr.write(`\rfilling the log: ${Math.min(LOG, from + chunk)}/${LOG} events`);
  }
  await pool.query(
    `INSERT INTO ${q}.streams (stream, version) SELECT 'prefill-' || s, ${Math.ceil(LOG / 10000)} FROM generate_series(0, 9999) s`,
  );
  process.stderr.write('\n');
  await pool.query(`VACUUM ANALYZE ${q}.events`);
}

const ratio = (a = 0, b = 1) => `${Math.round((100 * a) / b)}%`;

try {
  await app.migrate();
  if (LOG > 0) await prefill();
  const server = (await pool.query(`SELECT current_setting('server_version') AS v`)).rows[0].v;
  process.stdout.write(
    `PostgreSQL ${server}, ${SINGLES} single appends and ${BULK_TOTAL} bulk events per round, best of ${ROUNDS} interleaved rounds\n`,
  );
  const single = (name: string, run: () => Promise<void>) => ({ name, events: () => SINGLES, run });
  const bulk = (name: string, run: () => Promise<void>) => ({ name, events: () => BULK_TOTAL, run });
  const [rawSingleRate, rawSameRate, rawNotifyRate, obSingleRate, sqlSingleRate] = await measure([
    single('raw single-row INSERT per transaction', () => rawSingle()),
    single('raw single-row INSERT, same rows', () => rawSingle(100)),
    single('raw single-row INSERT + pg_notify', rawSingleNotify),
    single('outbatch append(event)', outbatchSingle),
    single('append_events() from SQL, one event', sqlSingle),
  ]);
  const [rawMultiRate, rawCopyRate, rawCopySameRate, obBulkRate, obKeyedRate, sqlBulkRate] = await measure([
    bulk('raw 1000-row multi-row INSERT', rawMultiRow),
    bulk('raw COPY (10k rows per COPY)', () => rawCopy()),
    bulk('raw COPY, same rows', () => rawCopy(1000)),
    bulk('outbatch append(10k events) [COPY]', outbatchBulk),
    bulk('outbatch append(10k keyed) [SQL fn]', outbatchBulkKeyed),
    bulk('append_events() from SQL, 10k events', sqlBulk),
  ]);
  await pool.query(`VACUUM ANALYZE ${q}.events`);
  const count = Number((await pool.query(`SELECT count(*) FROM ${q}.events`)).rows[0].count);
  process.stdout.write(`reading ${count} events\n`);
  let obReadRate = 0;
  let rawReadRate = 0;
  for (let round = 0; round < READ_ROUNDS; round++) {
    const rates = await readInTurn();
    if (rates.events !== count) throw new Error(`read() saw ${rates.events} of ${count} events`);
    obReadRate = Math.max(obReadRate, rates.outbatch);
    rawReadRate = Math.max(rawReadRate, rates.raw);
  }
  printRate('outbatch read() pages of 1000', obReadRate);
  printRate('raw keyset scan pages of 1000', rawReadRate);

  process.stdout.write('\nratios (target)\n');
  process.stdout.write(
    `single append / raw single INSERT   ${ratio(obSingleRate, rawSingleRate)} (>= 90%)\n`,
  );
  process.stdout.write(
    `single append / raw INSERT, same rows ${ratio(obSingleRate, rawSameRate)} (like for like)\n`,
  );
  process.stdout.write(`bulk append / raw COPY              ${ratio(obBulkRate, rawCopyRate)} (>= 60%)\n`);
  process.stdout.write(
    `bulk append / raw COPY, same rows  ${ratio(obBulkRate, rawCopySameRate)} (like for like)\n`,
  );
  process.stdout.write(`bulk append / raw multi-row INSERT  ${ratio(obBulkRate, rawMultiRate)}\n`);
  process.stdout.write(`read() / raw keyset scan            ${ratio(obReadRate, rawReadRate)} (>= 80%)\n`);
  process.stdout.write(`single append / raw INSERT + notify  ${ratio(obSingleRate, rawNotifyRate)}\n`);
  process.stdout.write(`single append / SQL function        ${ratio(obSingleRate, sqlSingleRate)}\n`);
  process.stdout.write(`bulk append / SQL function          ${ratio(obBulkRate, sqlBulkRate)}\n`);
  process.stdout.write(`keyed bulk append / raw COPY        ${ratio(obKeyedRate, rawCopyRate)}\n`);
} finally {
  await pool.query(`DROP SCHEMA IF EXISTS ${q} CASCADE`).catch(() => {});
  await pool.end();
  await app.close();
}
