/** The bulk append path: COPY into the events table for large batches. */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { eventsChannel } from './follow.js';
import type { StoredEvent } from './storedEvent.js';
import type { ValidatedEvent } from './validate.js';

/** Batches at least this large, without idempotency keys or expectedVersion, use COPY. */
export const COPY_FROM = 1000;

/** Returned events built per turn of the event loop while the COPY runs. */
const OVERLAP_CHUNK = 1000;

/**
 * The bulk path, chosen by measurement (ops/bench/RESULTS.md): INSERT … SELECT from a jsonb
 * array inserts row by row, COPY inserts in multi-row batches, ~1.7x faster at 10k events.
 * Same steps as append_events, in one transaction: bump the streams (row locks in stream
 * order) and NOTIFY, COPY with the versions computed from the bump, read back the
 * positions COPY assigned (in input order: COPY inserts in file order).
 */
export function makeCopyAppend(deps: { schema: string }) {
  const q = quoteSchema(deps.schema);
  const BUMP = `
    WITH counts AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS c(stream, n)),
    bumped AS (
      INSERT INTO ${q}.streams AS s (stream, version)
      SELECT stream, n FROM counts ORDER BY stream
      ON CONFLICT ON CONSTRAINT streams_pkey DO UPDATE SET version = s.version + excluded.version
      RETURNING s.stream, s.version
    )
    SELECT b.stream, b.version::text AS version,
           pg_current_xact_id()::text AS tx_id, floor(extract(epoch FROM now()) * 1000)::int8 AS recorded_at_ms,
           (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
            FROM ${q}.events_position_seq)::text AS floor,
           (SELECT pg_notify('${eventsChannel(deps.schema)}', '')) AS notified
    FROM bumped b`;
  const copySql = (withMetadata: boolean, withVersion: boolean) =>
    `COPY ${q}.events (stream, stream_version, type, data${withMetadata ? ', metadata' : ''}${withVersion ? ', type_version' : ''}) FROM STDIN`;
  // Every position above the floor in this transaction is ours (one appender per client).
  // Usually they are one unbroken run (no concurrent appender drew from the sequence
  // meanwhile): then min and max say it all, without reading 10k rows back.
  const RANGE = `
    SELECT min(position)::text AS first, max(position)::text AS last, count(*)::int AS n FROM ${q}.events
    WHERE tx_id = pg_current_xact_id() AND position > $1::bigint`;
  // Named "at", not "position": ORDER BY would take the text output column and sort '10' before '9'.
  const POSITIONS = `
    SELECT position::text AS at FROM ${q}.events
    WHERE tx_id = pg_current_xact_id() AND position > $1::bigint
    ORDER BY tx_id, position`;

  async function positionsAfter(client: pg.ClientBase, floor: string, count: number): Promise<bigint[]> {
    const range = (await client.query<{ first: string; last: string; n: number }>(RANGE, [floor])).rows[0]!;
    if (range.n !== count) {
      throw new Error(`COPY stored ${range.n} of ${count} events: report this as a bug`);
    }
    const first = BigInt(range.first);
    if (BigInt(range.last) - first + 1n === BigInt(count)) {
      return Array.from({ length: count }, (_, i) => first + BigInt(i));
    }
    const { rows } = await client.query<{ at: string }>(POSITIONS, [floor]);
    return rows.map((row) => BigInt(row.at));
  }

  return async function copyAppend(
    client: pg.ClientBase,
    events: ValidatedEvent[],
  ): Promise<(StoredEvent & { duplicate: false })[]> {
    const counts = new Map<string, number>();
    for (const e of events) counts.set(e.stream, (counts.get(e.stream) ?? 0) + 1);
    const bumped = await client.query<{
      stream: string;
      version: string;
      tx_id: string;
      recorded_at_ms: string;
      floor: string;
    }>(BUMP, [[...counts.keys()], [...counts.values()]]);
    const next = new Map<string, number>();
    for (const row of bumped.rows) next.set(row.stream, Number(row.version) - counts.get(row.stream)! + 1);
    // Without metadata anywhere the column is left to its default: one jsonb less to parse per row.
    const withMetadata = events.some((e) => e.metadata !== '{}');
    // Likewise type versions when every event is version 1, the column's default.
    const withVersion = events.some((e) => e.version !== 1);
    const versions: number[] = new Array(events.length);
    const lines: string[] = new Array(events.length);
    for (let i = 0; i < events.length; i++) {
      const e = events[i]!;
      const version = next.get(e.stream)!;
      next.set(e.stream, version + 1);
      versions[i] = version;
      lines[i] =
        `${copyText(e.stream)}\t${version}\t${copyText(e.type)}\t${copyJson(e.data)}` +
        (withMetadata ? `\t${copyJson(e.metadata)}` : '') +
        (withVersion ? `\t${e.version}\n` : '\n');
    }
    const copied = pipeline(
      Readable.from([lines.join('')]),
      client.query(copyFrom(copySql(withMetadata, withVersion))),
    );
    copied.catch(() => {}); // awaited below; must not count as unhandled meanwhile
    const { floor, tx_id, recorded_at_ms } = bumped.rows[0]!;
    const recordedAt = Number(recorded_at_ms);
    // While PostgreSQL inserts, build what append returns (data parsed back from the
    // validated JSON text), a chunk at a time with a turn of the event loop before each, so
    // the COPY's data goes out first: Node's work then overlaps the server's.
    const stored: (StoredEvent & { duplicate: false })[] = new Array(events.length);
    for (let start = 0; start < events.length; start += OVERLAP_CHUNK) {
      await new Promise((resolve) => setImmediate(resolve));
      const end = Math.min(events.length, start + OVERLAP_CHUNK);
      for (let i = start; i < end; i++) {
        const e = events[i]!;
        stored[i] = {
          duplicate: false,
          position: 0n, // known once the COPY is done
          txId: 0n,
          stream: e.stream,
          streamVersion: versions[i]!,
          type: e.type,
          version: e.version,
          data: JSON.parse(e.data),
          metadata: e.metadata === '{}' ? {} : JSON.parse(e.metadata),
          recordedAt: new Date(recordedAt),
          idempotencyKey: null,
          checkpoint: '',
        };
      }
    }
    await copied;
    const positions = await positionsAfter(client, floor, events.length);
    const txId = BigInt(tx_id);
    for (let i = 0; i < stored.length; i++) {
      const event = stored[i]!;
      event.position = positions[i]!;
      event.txId = txId;
      event.checkpoint = `${tx_id}:${positions[i]}`;
    }
    return stored;
  };
}

/**
 * A client COPY can use: node-postgres' own (a pooled client is one), in a transaction
 * (`'T'`) or idle (`'I'`, and then we open one). Anything else takes the SQL function.
 */
export function copyCapable(db: Queryable): pg.ClientBase | undefined {
  if (!(db instanceof pg.Client)) return undefined;
  const status = db.getTransactionStatus?.();
  return status === 'T' || status === 'I' ? db : undefined;
}

/** JSON text from JSON.stringify: control characters are already escaped, only backslashes need doubling. */
function copyJson(json: string): string {
  return json.includes('\\') ? json.replace(/\\/g, '\\\\') : json;
}

// COPY text format: backslash, tab, newline and carriage return are escaped.
function copyText(value: string): string {
  return /[\\\t\n\r]/.test(value)
    ? value.replace(/[\\\t\n\r]/g, (c) =>
        c === '\\' ? '\\\\' : c === '\t' ? '\\t' : c === '\n' ? '\\n' : '\\r',
      )
    : value;
}
