/**
 * The archived horizon: the highest (tx_id, position), in the readers' order, of every
 * archived event (event_log.archived_through_*). A reader after a checkpoint below it
 * would silently miss events that left the database, so it is refused, with the archive
 * named. Gap-safe reads check it in the page's own statement (read.ts), so an archive
 * committing between a check and a read cannot slip through; the rest (replay, re-drive)
 * check once, up front, with the functions here: one single-row read of event_log.
 */
import type { Queryable } from '../db/queryable.js';
import { ArchivedEventsError } from '../errors.js';
import { type Checkpoint, type CheckpointParts, formatCheckpoint, parseCheckpoint } from './checkpoint.js';

export async function readArchivedHorizon(db: Queryable, q: string): Promise<CheckpointParts> {
  const { rows } = await db.query<{ tx: string; position: string }>(
    `SELECT archived_through_tx::text AS tx, archived_through_position::text AS position FROM ${q}.event_log`,
  );
  return { txId: BigInt(rows[0]?.tx ?? '0'), position: BigInt(rows[0]?.position ?? '0') };
}

export function isBefore(a: CheckpointParts, b: CheckpointParts): boolean {
  return a.txId !== b.txId ? a.txId < b.txId : a.position < b.position;
}

/**
 * The error for `asked` (what was asked, e.g. `reading after checkpoint "0:0"`), naming
 * the archives (read only now, when refusing); with `processor`, the way on is its replay.
 */
export async function archivedEventsError(
  db: Queryable,
  q: string,
  asked: string,
  processor?: string,
): Promise<ArchivedEventsError> {
  const horizon = formatCheckpoint(await readArchivedHorizon(db, q));
  const { rows } = await db.query<{ file: string; first: string; last: string; at: Date }>(
    `SELECT file, min(from_position)::text AS first, (max(to_position) - 1)::text AS last, max(archived_at) AS at
     FROM ${q}.event_archives GROUP BY file ORDER BY min(from_position)`,
  );
  const files = rows.map((row) => row.file);
  const where = rows
    .map((row) => `positions ${row.first}-${row.last} to ${row.file} on ${row.at.toISOString().slice(0, 10)}`)
    .join(', ');
  const wayOn =
    processor === undefined
      ? `read after checkpoint "${horizon}" instead`
      : `start it after the archive with "outbatch replay ${processor} --from archived --yes"`;
  return new ArchivedEventsError(
    `${asked} needs archived events (${where || 'no archive recorded'}; archived horizon ${horizon}): ${wayOn}, or bring them back into another schema with "outbatch events import <file> --schema <name>"`,
    horizon,
    files,
  );
}

/** Throws ArchivedEventsError when `after` is below the archived horizon. */
export async function checkArchivedHorizon(
  db: Queryable,
  q: string,
  after: Checkpoint,
  asked: string,
  processor?: string,
): Promise<void> {
  const horizon = await readArchivedHorizon(db, q);
  if (isBefore(parseCheckpoint(after), horizon)) throw await archivedEventsError(db, q, asked, processor);
}

/** The archive row holding `position`, if it was archived (its event is gone). */
export async function archivedPosition(db: Queryable, q: string, position: bigint): Promise<boolean> {
  const { rows } = await db.query(
    `SELECT 1 FROM ${q}.event_archives WHERE $1::bigint >= from_position AND $1::bigint < to_position LIMIT 1`,
    [position.toString()],
  );
  return rows.length > 0;
}

/** Whether an archived event was recorded at or after `at` (a `--from <time>` inside the archive). */
export async function archivedSince(db: Queryable, q: string, at: Date): Promise<boolean> {
  const { rows } = await db.query(`SELECT 1 FROM ${q}.event_archives WHERE last_recorded_at >= $1 LIMIT 1`, [
    at,
  ]);
  return rows.length > 0;
}
