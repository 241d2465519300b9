/** The processors' statements: one per function, the quoted schema the only interpolation. */
import type { Queryable } from '../db/queryable.js';

export interface VersionRow {
  version: number;
  checkpoint: string;
  paused: boolean;
  failed: boolean;
}

/**
 * First sight of a processor creates version 1, active; every start records the filter
 * as defined now. Concurrent workers race harmlessly on the key.
 */
export async function ensureProcessor(
  db: Queryable,
  q: string,
  name: string,
  types: string[] | null,
  streamPrefix: string | null,
): Promise<void> {
  await db.query(
    `INSERT INTO ${q}.processors (name, version, active, types, stream_prefix)
     SELECT $1, 1, true, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM ${q}.processors WHERE name = $1)
     ON CONFLICT DO NOTHING`,
    [name, types, streamPrefix],
  );
  await db.query(
    `UPDATE ${q}.processors SET types = $2, stream_prefix = $3 WHERE name = $1 AND retired_at IS NULL`,
    [name, types, streamPrefix],
  );
}

/** Versions that run: every version not retired by a promotion. */
export async function runnableVersions(db: Queryable, q: string, name: string): Promise<number[]> {
  const { rows } = await db.query<{ version: number }>(
    `SELECT version FROM ${q}.processors WHERE name = $1 AND retired_at IS NULL ORDER BY version`,
    [name],
  );
  return rows.map((row) => row.version);
}

/**
 * Locks the version's row, in the transaction of a run's first page (and of the page after
 * anything changed it). Later pages do not read it again: saveCheckpoint checks it instead.
 */
export async function lockVersion(
  db: Queryable,
  q: string,
  name: string,
  version: number,
): Promise<VersionRow | undefined> {
  const { rows } = await db.query<VersionRow>(
    `SELECT version, checkpoint_tx::text || ':' || checkpoint_position::text AS checkpoint,
            paused, failed_at IS NOT NULL AS failed
     FROM ${q}.processors
     WHERE name = $1 AND version = $2 AND retired_at IS NULL
     FOR UPDATE`,
    [name, version],
  );
  return rows[0];
}

/**
 * Moves the checkpoint from `from` to `to`, in the page's transaction; a page that passed
 * clears the failure streak. Only if the row is still as the run last saw it: at `from`,
 * not paused, failed or retired. False otherwise (a rewind, a pause or a halt came in while
 * the page ran): the caller rolls the page back. The UPDATE waits for a change in flight
 * and then re-checks, so a page and an operator's change never both win.
 */
export async function saveCheckpoint(
  db: Queryable,
  q: string,
  name: string,
  version: number,
  from: { txId: bigint; position: bigint },
  to: { txId: bigint; position: bigint },
  processed: number,
  now: Date,
): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE ${q}.processors
     SET checkpoint_tx = $3::text::xid8, checkpoint_position = $4, events_processed = events_processed + $5,
         last_run_at = $6,
         failing_attempts = CASE WHEN $5 > 0 THEN 0 ELSE failing_attempts END,
         failing_position = CASE WHEN $5 > 0 THEN NULL ELSE failing_position END
     WHERE name = $1 AND version = $2
       AND checkpoint_tx = $7::text::xid8 AND checkpoint_position = $8
       AND NOT paused AND failed_at IS NULL AND retired_at IS NULL`,
    [
      name,
      version,
      to.txId.toString(),
      to.position.toString(),
      processed,
      now,
      from.txId.toString(),
      from.position.toString(),
    ],
  );
  return rowCount === 1;
}

/** Counts one more failed run on `position`; returns how many in a row failed on it. */
export async function recordFailure(
  db: Queryable,
  q: string,
  name: string,
  version: number,
  position: bigint,
  error: string,
  now: Date,
): Promise<number> {
  const { rows } = await db.query<{ attempts: number }>(
    `UPDATE ${q}.processors
     SET failing_attempts = CASE WHEN failing_position = $3 THEN failing_attempts + 1 ELSE 1 END,
         failing_position = $3, last_error = $4, last_run_at = $5
     WHERE name = $1 AND version = $2
     RETURNING failing_attempts AS attempts`,
    [name, version, position.toString(), error, now],
  );
  return rows[0]?.attempts ?? 1;
}

export async function haltVersion(
  db: Queryable,
  q: string,
  name: string,
  version: number,
  position: bigint,
  error: string,
  now: Date,
): Promise<void> {
  await db.query(
    `UPDATE ${q}.processors SET failed_at = $5, failed_position = $3, last_error = $4 WHERE name = $1 AND version = $2`,
    [name, version, position.toString(), error, now],
  );
}

export async function deadLetter(
  db: Queryable,
  q: string,
  entry: {
    processor: string;
    version: number;
    position: bigint;
    txId: bigint;
    stream: string;
    type: string;
    error: string;
    stack: string | null;
    attempts: number;
  },
): Promise<void> {
  await db.query(
    `INSERT INTO ${q}.processor_dead_letters (processor, version, position, tx_id, stream, type, error, stack, attempts)
     VALUES ($1, $2, $3, $4::text::xid8, $5, $6, $7, $8, $9)
     ON CONFLICT (processor, version, position) DO NOTHING`,
    [
      entry.processor,
      entry.version,
      entry.position.toString(),
      entry.txId.toString(),
      entry.stream,
      entry.type,
      entry.error,
      entry.stack,
      entry.attempts,
    ],
  );
}

/** Pauses or resumes every running version; returns how many rows changed. */
export async function setPaused(db: Queryable, q: string, name: string, paused: boolean): Promise<number> {
  const { rowCount } = await db.query(
    `UPDATE ${q}.processors SET paused = $2 WHERE name = $1 AND retired_at IS NULL`,
    [name, paused],
  );
  return rowCount ?? 0;
}

/** Clears a halt after a fix: the next run retries the event with a fresh budget. */
export async function resetFailed(db: Queryable, q: string, name: string): Promise<number> {
  const { rowCount } = await db.query(
    `UPDATE ${q}.processors
     SET failed_at = NULL, failed_position = NULL, failing_attempts = 0, failing_position = NULL
     WHERE name = $1 AND retired_at IS NULL AND failed_at IS NOT NULL`,
    [name],
  );
  return rowCount ?? 0;
}

/**
 * Defers a run of every running version, by task name (for callers without the
 * processor's definition: the CLI, the dashboard); the queue is the one its workers registered.
 */
export async function wakeProcessor(db: Queryable, q: string, name: string): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n
     FROM ${q}.processors p,
          LATERAL ${q}.defer_job('processor:' || p.name, jsonb_build_object('version', p.version), NULL, NULL, NULL,
            'processor:' || p.name || '@' || p.version, 'processor:' || p.name || '@' || p.version, NULL, 'ignore') d
     WHERE p.name = $1 AND p.retired_at IS NULL`,
    [name],
  );
  return rows[0]?.n ?? 0;
}

/**
 * Whether `db` holds events after the checkpoint, of these types and stream prefix.
 * `readableNow`: only those a gap-safe read there would return now (below its own horizon).
 * Without it, after a read that returned nothing: events a gap-safe read could not see yet
 * (their transaction is above the oldest open one), so a run that stops at the head must
 * look again soon (their append NOTIFY has already been spent). With it, on the primary
 * after a run read nothing on a replica (`readUrl`): the replica lags, and the run waits for
 * it rather than for an open transaction. Reply lost or refused: the run fails after its
 * pages committed, and its job's retry simply looks again.
 */
export async function eventsAfter(
  db: Queryable,
  q: string,
  checkpoint: string,
  types: string[] | null,
  streamPrefix: string | null,
  options: { readableNow: boolean },
): Promise<boolean> {
  const [tx, position] = checkpoint.split(':');
  const { rows } = await db.query<{ found: boolean }>(
    `SELECT EXISTS (
       SELECT 1 FROM ${q}.events
       WHERE (tx_id, position) > ($1::text::xid8, $2::bigint)
         AND (NOT $5::boolean OR tx_id < pg_snapshot_xmin(pg_current_snapshot()))
         AND ($3::text[] IS NULL OR type = ANY ($3::text[]))
         AND ($4::text IS NULL OR starts_with(stream, $4::text))
     ) AS found`,
    [tx, position, types, streamPrefix, options.readableNow],
  );
  return rows[0]?.found ?? false;
}

/**
 * The session whose transaction is oldest cluster-wide (it keeps `pg_snapshot_xmin`, hence
 * gap-safe reads, behind): for the one log line a long hold deserves. Without
 * pg_read_all_stats another role's `xact_start` is hidden, so the age may be null; a
 * prepared transaction has no session and is not found here.
 */
export async function oldestOpenTransaction(
  db: Queryable,
): Promise<{ pid: number; ageSeconds: number | null } | undefined> {
  const { rows } = await db.query<{ pid: number; ageSeconds: number | null }>(
    `SELECT pid, round(extract(epoch FROM now() - xact_start))::int AS "ageSeconds"
     FROM pg_stat_activity
     WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
     ORDER BY age(backend_xid) DESC
     LIMIT 1`,
  );
  return rows[0];
}
