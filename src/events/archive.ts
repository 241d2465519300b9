/**
 * `outbatch events archive`: whole range partitions leave the database, oldest first —
 * written to one gzip NDJSON file, read back and verified, then detached and dropped in one
 * short transaction that also records them and moves the archived horizon. Never a long
 * DELETE. docs/event-log.md, "Archive and import", is the operator's side of this file.
 *
 * Every step is safe to repeat after a crash:
 * - the file is written to `<file>.partial` and renamed once complete and synced, so a
 *   file under the final name is whole; a run that stopped before the final transaction
 *   dropped nothing, and the file it left is not recorded anywhere: the next run writes
 *   it again (overwriting it) from the partitions, which are all still there;
 * - idempotency keys are deleted in the final transaction, with the drop: a failed drop
 *   leaves every key (a retried append then still finds its event);
 * - the final transaction records every partition of the file, moves the horizon, and
 *   detaches and drops them, or does none of it; it refuses when an event that stays would
 *   sort before the new horizon (a reader starting there would skip it). If its reply is lost, the partitions are
 *   either gone and recorded (the next run starts after them, and refuses to overwrite a
 *   file event_archives names) or all still there.
 */
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { DateTime } from 'luxon';
import type pg from 'pg';
import { type Actor, currentActor, recordAudit } from '../audit.js';
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { LOCK_NOT_AVAILABLE } from '../db/retryable.js';
import { withTransaction } from '../db/transaction.js';
import { OutbatchError, ValidationError } from '../errors.js';
import type { Logger } from '../log.js';
import { isBefore, readArchivedHorizon } from './archivedHorizon.js';
import { type ArchiveRow, archiveLine, verifyArchive, writeArchive } from './archiveFile.js';
import { type CheckpointParts, formatCheckpoint } from './checkpoint.js';

export interface ArchiveOptions {
  /** An event position (partitions whose upper bound is at or below it) or an ISO time. */
  before: string;
  /** The .ndjson.gz file to write; required unless `dryRun`. */
  to?: string;
  /** Report what would go and why the rest stays; write nothing. */
  dryRun?: boolean;
  /** Who, for the audit log (default: this process's user and host). */
  by?: Actor;
  onProgress?: (done: number, total: number) => void;
  /** lock_timeout of the final transaction's DETACH/DROP (default 2000 ms). */
  lockTimeoutMs?: number;
  /** How many times the final transaction is tried when a lock was not granted in time (default 30). */
  lockAttempts?: number;
}

export interface PartitionPlan {
  partition: string;
  /** [from, to): the partition's range. */
  from: bigint;
  to: bigint;
  events: number;
  /** Its highest (tx_id, position) in the readers' order; undefined when empty. */
  through?: string;
  /** Its newest recorded_at (undefined when empty). */
  newest?: Date;
}

export interface ArchiveResult {
  dryRun: boolean;
  /** The partitions archived (or, in a dry run, that would be), in position order. */
  partitions: PartitionPlan[];
  events: number;
  /** The first partition that stays, and why (undefined when none is left to look at). */
  stopped?: { partition: string; reason: string };
  file?: string;
  sha256?: string;
  /** The archived horizon after the run, `"<tx_id>:<position>"`. */
  horizon: string;
}

type Before = { kind: 'position'; position: bigint } | { kind: 'time'; at: Date };

export function parseBefore(text: unknown): Before {
  if (typeof text === 'string' && /^\d{1,19}$/.test(text))
    return { kind: 'position', position: BigInt(text) };
  if (typeof text === 'string' && /\d{4}-\d{2}-\d{2}/.test(text)) {
    const at = DateTime.fromISO(text, { setZone: true });
    if (at.isValid) return { kind: 'time', at: at.toJSDate() };
  }
  throw new ValidationError(
    `--before ${JSON.stringify(text)} is invalid: expected an event position (a whole number) or an ISO time such as 2026-01-31T00:00:00Z`,
  );
}

const PAGE = 5000;

export function makeArchive(deps: { pool: () => Promise<pg.Pool>; schema: string; log: Logger }) {
  const q = quoteSchema(deps.schema);

  /** Why partition `p` may not go, or undefined if it may; fills in its count and through. */
  async function refusal(
    db: pg.PoolClient,
    p: PartitionPlan,
    before: Before,
    reached: bigint,
  ): Promise<string | undefined> {
    if (before.kind === 'position' && p.to > before.position) {
      return `its upper bound ${p.to} is above --before ${before.position}`;
    }
    if (reached < p.to - 1n) {
      return `it is still being filled (the position sequence is at ${reached}, the partition ends at ${p.to - 1n})`;
    }
    const stats = (
      await db.query<{ n: string; newest: Date | null; in_flight: boolean }>(
        `SELECT count(*)::text AS n, max(recorded_at) AS newest,
                coalesce(bool_or(tx_id >= pg_snapshot_xmin(pg_current_snapshot())), false) AS in_flight
         FROM ${q}.events WHERE position >= $1 AND position < $2`,
        [p.from.toString(), p.to.toString()],
      )
    ).rows[0]!;
    p.events = Number(stats.n);
    p.newest = stats.newest ?? undefined;
    if (stats.in_flight) {
      return 'some of its events are not yet readable (a transaction that started before them is still open): run the archive again once it ended';
    }
    if (before.kind === 'time' && stats.newest && stats.newest >= before.at) {
      return `it holds events recorded at or after --before ${before.at.toISOString()} (the newest at ${stats.newest.toISOString()})`;
    }
    const top = (
      await db.query<{ tx: string; position: string }>(
        `SELECT tx_id::text AS tx, position::text AS position FROM ${q}.events
         WHERE position >= $1 AND position < $2 ORDER BY tx_id DESC, position DESC LIMIT 1`,
        [p.from.toString(), p.to.toString()],
      )
    ).rows[0];
    if (!top) return undefined; // empty (every append in it rolled back): nothing to keep
    p.through = `${top.tx}:${top.position}`;
    const behind = (
      await db.query<{ name: string; version: number; checkpoint: string }>(
        `SELECT name, version, checkpoint_tx::text || ':' || checkpoint_position::text AS checkpoint
         FROM ${q}.processors
         WHERE retired_at IS NULL AND (checkpoint_tx, checkpoint_position) < ($1::text::xid8, $2::bigint)
         ORDER BY name, version LIMIT 1`,
        [top.tx, top.position],
      )
    ).rows[0];
    if (behind) {
      return `processor "${behind.name}" version ${behind.version} is at checkpoint ${behind.checkpoint}, before the partition's last event ${p.through}: let it catch up (see "outbatch processors status ${behind.name}"), or retire it`;
    }
    // One policy per (stream, type) of the partition, not per event: the newest event of
    // each pair decides whether all of them are past their policy.
    const pinned = (
      await db.query<{
        stream: string;
        type: string;
        newest: Date;
        prefix: string | null;
        policy_type: string | null;
        keep_days: number | null;
      }>(
        `SELECT g.stream, g.type, g.newest, r.stream_prefix AS prefix, r.type AS policy_type, r.keep_days
         FROM (SELECT stream, type, max(recorded_at) AS newest FROM ${q}.events
               WHERE position >= $1 AND position < $2 GROUP BY stream, type) g
         LEFT JOIN LATERAL (
           SELECT * FROM ${q}.event_retention r
           WHERE starts_with(g.stream, r.stream_prefix) AND r.type IN (g.type, '')
           ORDER BY length(r.stream_prefix) DESC, r.type = '' LIMIT 1) r ON true
         WHERE r.keep_days IS NULL OR g.newest >= now() - make_interval(days => r.keep_days)
         ORDER BY g.stream, g.type LIMIT 1`,
        [p.from.toString(), p.to.toString()],
      )
    ).rows[0];
    if (pinned) {
      const what = `stream "${pinned.stream}" (type ${pinned.type})`;
      if (pinned.prefix === null) {
        return `${what} has no retention policy, so it is kept forever: set one with "outbatch events retention set --stream-prefix ${JSON.stringify(pinned.stream)} --keep-days <days>"`;
      }
      const policy = `the policy for stream prefix ${JSON.stringify(pinned.prefix)} and ${pinned.policy_type ? `type ${pinned.policy_type}` : 'any type'}`;
      if (pinned.keep_days === null) {
        return `${what} is kept forever by ${policy}: change it with "outbatch events retention set"`;
      }
      return `${what} is kept ${pinned.keep_days} days by ${policy}, and its newest event was recorded at ${pinned.newest.toISOString()}`;
    }
    return undefined;
  }

  async function* lines(db: pg.Pool, plans: PartitionPlan[], typeVersion: boolean, onRow: () => void) {
    const sql = `
      SELECT position::text, tx_id::text, stream, stream_version::text, type, data::text, metadata::text,
             to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), idempotency_key
             ${typeVersion ? ', to_jsonb(type_version)::text' : ''}
      FROM ${q}.events WHERE position > $1 AND position < $2 ORDER BY position LIMIT $3`;
    for (const p of plans) {
      // Keyset pages by position, each its own statement: no transaction is held open
      // (an open one with an id would hold back every gap-safe reader's horizon).
      let after = p.from - 1n;
      for (;;) {
        const { rows } = await db.query<string[]>({
          text: sql,
          values: [after.toString(), p.to.toString(), PAGE],
          rowMode: 'array',
        } as pg.QueryConfig);
        for (const r of rows) {
          const row: ArchiveRow = {
            position: r[0]!,
            txId: r[1]!,
            stream: r[2]!,
            streamVersion: r[3]!,
            type: r[4]!,
            data: r[5]!,
            metadata: r[6]!,
            recordedAt: r[7]!,
            idempotencyKey: r[8] ?? null,
            typeVersion: typeVersion ? r[9]! : undefined,
          };
          onRow();
          yield archiveLine(row);
        }
        if (rows.length < PAGE) break;
        after = BigInt(rows.at(-1)![0]!);
      }
    }
  }

  async function deleteKeys(db: Queryable, p: PartitionPlan): Promise<void> {
    // One statement in the final transaction: the partition is closed (nothing adds keys to
    // it), and a hash join over its keyed rows; partitions have no index on idempotency_key.
    await db.query(
      `DELETE FROM ${q}.event_keys k USING ${q}.events e
       WHERE e.position >= $1 AND e.position < $2 AND e.idempotency_key IS NOT NULL
         AND k.idempotency_key = e.idempotency_key AND k.position = e.position`,
      [p.from.toString(), p.to.toString()],
    );
  }

  async function archive(options: ArchiveOptions): Promise<ArchiveResult> {
    const before = parseBefore(options.before);
    let file: string | undefined;
    if (!options.dryRun) {
      if (typeof options.to !== 'string' || options.to.length === 0) {
        throw new ValidationError('--to is required: the .ndjson.gz file the archived events are written to');
      }
      file = path.resolve(options.to);
      await checkWritable(file);
    }
    const pool = await deps.pool();
    // One archive at a time per schema: a session lock on one connection held for the run.
    const session = await pool.connect();
    try {
      const { rows: locked } = await session.query<{ ok: boolean }>(
        `SELECT pg_try_advisory_lock(hashtext($1)) AS ok`,
        [`${deps.schema}.events.archive`],
      );
      if (!locked[0]?.ok) {
        throw new ValidationError(
          `another "outbatch events archive" is running on schema "${deps.schema}": wait for it to finish`,
        );
      }
      try {
        return await archiveLocked(pool, session, before, file, options);
      } finally {
        // A lost connection has released it already; the run's own error is the one to report.
        await session
          .query(`SELECT pg_advisory_unlock(hashtext($1))`, [`${deps.schema}.events.archive`])
          .catch(() => {});
      }
    } finally {
      session.release();
    }
  }

  async function archiveLocked(
    pool: pg.Pool,
    db: pg.PoolClient,
    before: Before,
    file: string | undefined,
    options: ArchiveOptions,
  ): Promise<ArchiveResult> {
    if (file !== undefined) {
      const { rows } = await db.query<{ partition: string }>(
        `SELECT partition FROM ${q}.event_archives WHERE file = $1 ORDER BY from_position LIMIT 1`,
        [file],
      );
      if (rows[0]) {
        throw new ValidationError(
          `--to ${file} already holds archived events (partition ${rows[0].partition} and maybe more): choose another file`,
        );
      }
    }
    const { rows: bounds } = await db.query<{ name: string; lower: string; upper: string }>(
      `SELECT name, lower::text, upper::text FROM ${q}.event_partition_bounds ORDER BY lower`,
    );
    const reached = BigInt(
      (
        await db.query<{ reached: string }>(
          `SELECT (CASE WHEN is_called THEN last_value ELSE last_value - 1 END)::text AS reached
           FROM ${q}.events_position_seq`,
        )
      ).rows[0]!.reached,
    );
    const plans: PartitionPlan[] = [];
    let stopped: ArchiveResult['stopped'];
    for (const b of bounds) {
      const p: PartitionPlan = { partition: b.name, from: BigInt(b.lower), to: BigInt(b.upper), events: 0 };
      const reason = await refusal(db, p, before, reached);
      if (reason !== undefined) {
        stopped = { partition: p.partition, reason };
        break;
      }
      plans.push(p);
    }
    const horizonNow = await readArchivedHorizon(db, q);
    let horizon = horizonNow;
    for (const p of plans) {
      if (p.through === undefined) continue;
      const [tx, position] = p.through.split(':').map(BigInt) as [bigint, bigint];
      const through: CheckpointParts = { txId: tx, position };
      if (isBefore(horizon, through)) horizon = through;
    }
    const events = plans.reduce((sum, p) => sum + p.events, 0);
    const result: ArchiveResult = {
      dryRun: Boolean(options.dryRun),
      partitions: plans,
      events,
      stopped,
      horizon: formatCheckpoint(horizon),
    };
    if (options.dryRun || plans.length === 0) return { ...result, horizon: formatCheckpoint(horizonNow) };

    const target = file!;
    const typeVersion = (
      await db.query<{ has: boolean }>(
        `SELECT EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = to_regclass($1) AND attname = 'type_version' AND NOT attisdropped) AS has`,
        [`${q}.events`],
      )
    ).rows[0]!.has;
    let done = 0;
    options.onProgress?.(0, events);
    const written = await writeArchive(
      target,
      lines(pool, plans, typeVersion, () => {
        done += 1;
        if (done % 1000 === 0) options.onProgress?.(done, events);
      }),
    );
    options.onProgress?.(done, events);
    // Read back what is on disk: count and checksum against what was written, each
    // partition's lines against a count from the database made now.
    const check = await verifyArchive(
      target,
      plans.map((p) => ({ from: p.from, to: p.to })),
    );
    const counted: number[] = [];
    for (const p of plans) {
      const { rows } = await db.query<{ n: string }>(
        `SELECT count(*)::text AS n FROM ${q}.events WHERE position >= $1 AND position < $2`,
        [p.from.toString(), p.to.toString()],
      );
      counted.push(Number(rows[0]!.n));
    }
    const mismatch =
      check.sha256 !== written.sha256
        ? `SHA-256 ${check.sha256} read back, ${written.sha256} written`
        : check.lines !== written.lines
          ? `${check.lines} lines read back, ${written.lines} written`
          : plans
              .map((p, i) =>
                check.perRange[i] !== counted[i] || counted[i] !== p.events
                  ? `${p.partition}: ${check.perRange[i]} in the file, ${counted[i]} in the database`
                  : '',
              )
              .find((text) => text !== '');
    if (mismatch) {
      throw new OutbatchError(
        'OUTBATCH_ARCHIVE_VERIFY',
        `archive file ${target} does not verify (${mismatch}): nothing was dropped; run the archive again`,
      );
    }

    const attempts = options.lockAttempts ?? 30;
    const lockTimeoutMs = options.lockTimeoutMs ?? 2000;
    for (let attempt = 1; ; attempt++) {
      try {
        await withTransaction(pool, async (tx) => {
          await tx.query(`SELECT set_config('lock_timeout', $1, true)`, [`${lockTimeoutMs}ms`]);
          // First: the lock and the counts, then the drops (the function says why); the
          // transaction takes its id only at the DETACH, so gap-safe readers are held back
          // for the catalog work and the few rows below, not for the counts.
          // The keys go in this transaction: deleted before a drop that then failed, a
          // retried append with one of them would store its event a second time.
          for (const p of plans) await deleteKeys(tx, p);
          await tx.query(`SELECT ${q}.drop_event_partitions($1::text[], $2::bigint[])`, [
            plans.map((p) => p.partition),
            plans.map((p) => p.events.toString()),
          ]);
          // What stays must sort after the horizon in the readers' order, or a reader
          // starting there (replay --from archived, a new processor) would skip it: a
          // transaction that committed late across the boundary, or rows in events_overflow.
          const { rows: hidden } = await tx.query<{ position: string }>(
            `SELECT position::text FROM ${q}.events WHERE (tx_id, position) <= ($1::text::xid8, $2::bigint) LIMIT 1`,
            [horizon.txId.toString(), horizon.position.toString()],
          );
          if (hidden[0]) {
            throw new OutbatchError(
              'OUTBATCH_ARCHIVE_ORDER',
              `event ${hidden[0].position} stays in the log but sorts before the archive's horizon ${formatCheckpoint(horizon)} in the readers' order (its transaction committed across the partition boundary, or it is in events_overflow): nothing was archived; archive fewer partitions (a lower --before)`,
            );
          }
          for (const p of plans) {
            const [throughTx, throughPosition] = (p.through ?? '0:0').split(':');
            await tx.query(
              `INSERT INTO ${q}.event_archives
                 (partition, from_position, to_position, events, through_tx, through_position, file, sha256, last_recorded_at)
               VALUES ($1, $2, $3, $4, $5::text::xid8, $6, $7, $8, $9)`,
              [
                p.partition,
                p.from.toString(),
                p.to.toString(),
                p.events,
                throughTx,
                throughPosition,
                target,
                written.sha256,
                p.newest ?? null,
              ],
            );
          }
          // The max of itself and the new partitions' highest, in the readers' order.
          await tx.query(
            `UPDATE ${q}.event_log
             SET (archived_through_tx, archived_through_position) =
               (SELECT CASE WHEN ($1::text::xid8, $2::bigint) > (archived_through_tx, archived_through_position)
                            THEN $1::text::xid8 ELSE archived_through_tx END,
                       CASE WHEN ($1::text::xid8, $2::bigint) > (archived_through_tx, archived_through_position)
                            THEN $2::bigint ELSE archived_through_position END)`,
            [horizon.txId.toString(), horizon.position.toString()],
          );
          await recordAudit(tx, q, options.by ?? currentActor(), 'events.archive', 'events', {
            file: target,
            sha256: written.sha256,
            events,
            partitions: plans.map((p) => p.partition),
            before: options.before,
            horizon: formatCheckpoint(horizon),
          });
        });
        break;
      } catch (error) {
        if ((error as { code?: string }).code !== LOCK_NOT_AVAILABLE || attempt >= attempts) {
          if ((error as { code?: string }).code === '55000') {
            throw new OutbatchError(
              'OUTBATCH_ARCHIVE_CHANGED',
              `${(error as Error).message} (nothing was dropped; the file ${target} is not recorded and will be overwritten)`,
            );
          }
          throw error;
        }
        deps.log.info(
          { attempt, partitions: plans.map((p) => p.partition) },
          'archive: events is busy (a long read or append); trying the drop again',
        );
        await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 200 * attempt)));
      }
    }
    deps.log.info(
      {
        file: target,
        events,
        partitions: plans.map((p) => p.partition),
        by: (options.by ?? currentActor()).actor,
      },
      `archived ${events} events to ${target}`,
    );
    return { ...result, file: target, sha256: written.sha256 };
  }

  return archive;
}

/** The folder exists and can be written to, checked before anything is read or written. */
async function checkWritable(file: string): Promise<void> {
  const folder = path.dirname(file);
  try {
    await fs.access(folder, constants.W_OK);
    if (!(await fs.stat(folder)).isDirectory())
      throw Object.assign(new Error('not a folder'), { code: 'ENOTDIR' });
  } catch (error) {
    throw new ValidationError(
      `--to ${file} cannot be written (${(error as { code?: string }).code ?? 'unknown'} on ${folder}): choose a file in a writable folder`,
    );
  }
}
