/**
 * Points in the log given by an operator — `start`, a position, or an ISO time — and
 * the ranges between them, for replays and re-drives. Checkpoints order by
 * (tx_id, position), so a point becomes the checkpoint just before (or at) an event.
 */
import { DateTime } from 'luxon';
import type { Queryable } from '../db/queryable.js';
import { ValidationError } from '../errors.js';
import {
  archivedEventsError,
  archivedPosition,
  archivedSince,
  readArchivedHorizon,
} from './archivedHorizon.js';
import { type Checkpoint, formatCheckpoint, parseCheckpoint, START_CHECKPOINT } from './checkpoint.js';
import { type EventFilter, filterParams } from './filter.js';

export type Point =
  | { kind: 'start' }
  | { kind: 'archived' }
  | { kind: 'position'; position: bigint }
  | { kind: 'time'; at: Date };

export function parsePoint(text: unknown, what: string): Point {
  if (text === 'start') return { kind: 'start' };
  if (text === 'archived') return { kind: 'archived' };
  if (typeof text === 'string' && /^\d{1,19}$/.test(text))
    return { kind: 'position', position: BigInt(text) };
  if (typeof text === 'string') {
    const at = DateTime.fromISO(text, { setZone: true });
    if (at.isValid && /\d{4}-\d{2}-\d{2}/.test(text)) return { kind: 'time', at: at.toJSDate() };
  }
  throw new ValidationError(
    `${what} ${JSON.stringify(text)} is invalid: expected "start", an event position (a whole number), an ISO time such as 2026-01-31T12:00:00Z, or "archived" (right after the archived events)`,
  );
}

async function eventAt(db: Queryable, q: string, position: bigint) {
  const { rows } = await db.query<{ tx_id: string; position: string }>(
    `SELECT tx_id::text, position::text FROM ${q}.events WHERE position = $1`,
    [position.toString()],
  );
  if (!rows[0] && (await archivedPosition(db, q, position)))
    throw await archivedEventsError(db, q, `event ${position}`);
  if (!rows[0])
    throw new ValidationError(
      `there is no event at position ${position}: check "outbatch events show ${position}"`,
    );
  return { txId: rows[0].tx_id, position: BigInt(rows[0].position) };
}

/** The first event (in readers' order) recorded at or after `at`, if any. */
async function firstAtOrAfter(db: Queryable, q: string, at: Date) {
  // The archived events' times are gone with them: a time inside the archive is refused,
  // not answered with the first event still stored.
  if (await archivedSince(db, q, at)) {
    throw await archivedEventsError(db, q, `time ${at.toISOString()}`);
  }
  const { rows } = await db.query<{ tx_id: string; position: string }>(
    `SELECT tx_id::text, position::text FROM ${q}.events e WHERE recorded_at >= $1 ORDER BY e.tx_id, e.position LIMIT 1`,
    [at],
  );
  return rows[0] ? { txId: rows[0].tx_id, position: BigInt(rows[0].position) } : undefined;
}

/** The checkpoint just before the point (so the event there is included); undefined past the head. */
export async function checkpointBefore(
  db: Queryable,
  q: string,
  point: Point,
): Promise<Checkpoint | undefined> {
  if (point.kind === 'start') return START_CHECKPOINT;
  // Right after the archived events: where a new processor on an archived log starts.
  if (point.kind === 'archived') return formatCheckpoint(await readArchivedHorizon(db, q));
  const event =
    point.kind === 'position' ? await eventAt(db, q, point.position) : await firstAtOrAfter(db, q, point.at);
  return event ? `${event.txId}:${event.position - 1n}` : undefined;
}

/** The last checkpoint a range ending at `point` includes: through that position, or up to that time. */
export async function checkpointThrough(
  db: Queryable,
  q: string,
  point: Point,
): Promise<Checkpoint | undefined> {
  if (point.kind === 'start' || point.kind === 'archived')
    throw new ValidationError(`--to cannot be "${point.kind}": give a position or an ISO time`);
  if (point.kind === 'position') {
    const event = await eventAt(db, q, point.position);
    return `${event.txId}:${event.position}`;
  }
  return checkpointBefore(db, q, point);
}

export interface Range extends EventFilter {
  after: Checkpoint;
  /** Inclusive end; undefined: up to the gap-safe head. */
  through?: Checkpoint;
}

function rangeParams(range: Range): unknown[] {
  const after = parseCheckpoint(range.after);
  const through = range.through === undefined ? undefined : parseCheckpoint(range.through);
  const [types, prefix] = filterParams(range);
  return [
    after.txId.toString(),
    after.position.toString(),
    through?.txId.toString() ?? null,
    through?.position.toString() ?? null,
    types,
    prefix,
  ];
}

const RANGE_WHERE = `(tx_id, position) > ($1::text::xid8, $2::bigint)
  AND ($3::text IS NULL OR (tx_id, position) <= ($3::text::xid8, $4::bigint))
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
  AND ($5::text[] IS NULL OR type = ANY ($5::text[]))
  AND ($6::text IS NULL OR starts_with(stream, $6::text))`;

/** How many events of each type the range holds (what a dry run reports). */
export async function countByType(
  db: Queryable,
  q: string,
  range: Range,
): Promise<{ type: string; count: number }[]> {
  const { rows } = await db.query<{ type: string; count: string }>(
    `SELECT type, count(*)::text AS count FROM ${q}.events WHERE ${RANGE_WHERE} GROUP BY type ORDER BY type`,
    rangeParams(range),
  );
  return rows.map((row) => ({ type: row.type, count: Number(row.count) }));
}

export async function countRange(db: Queryable, q: string, range: Range): Promise<number> {
  const { rows } = await db.query<{ n: string }>(
    `SELECT count(*)::text AS n FROM ${q}.events WHERE ${RANGE_WHERE}`,
    rangeParams(range),
  );
  return Number(rows[0]?.n ?? 0);
}
