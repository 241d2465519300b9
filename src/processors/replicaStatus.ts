/**
 * What status adds with `readUrl`: how far the replica is behind the primary, and which
 * processor versions wait for it. Status itself is read on the replica (that is the point:
 * the lag counts scan events), so it is the state as of the replica's replay point; the
 * replica view says how old that is, and whether a version's checkpoint on the primary
 * has events the primary could give it but the replica cannot yet.
 */
import type { Queryable } from '../db/queryable.js';
import type { ProcessorStatus } from './status.js';
import { eventsAfter } from './store.js';

export interface ReplicaView {
  /** False when readUrl is not a standby (a primary given as readUrl): no lag to report. */
  inRecovery: boolean;
  /** WAL the replica has not replayed yet, in bytes (0 when caught up). */
  lagBytes: number;
  /** Age of the last transaction replayed, when WAL is waiting; 0 when caught up. */
  lagSeconds: number;
  /** `pg_wal_replay_pause()` is in force on the replica: it will not catch up until resumed. */
  replayPaused: boolean;
}

export interface ReplicaWait {
  /** The version's checkpoint as the primary has it (status shows the replica's copy). */
  primaryCheckpoint: string;
  /** The primary has events after that checkpoint that the replica cannot read yet. */
  waiting: boolean;
}

export async function replicaView(primary: Queryable, replica: Queryable): Promise<ReplicaView> {
  const { rows: head } = await primary.query<{ lsn: string | null }>(
    'SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END AS lsn',
  );
  const { rows } = await replica.query<{
    recovery: boolean;
    bytes: string | null;
    seconds: number | null;
    paused: boolean | null;
  }>(
    `SELECT pg_is_in_recovery() AS recovery,
            pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn())::text AS bytes,
            extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS seconds,
            CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS paused`,
    [head[0]?.lsn ?? null],
  );
  const row = rows[0]!;
  const lagBytes = Math.max(0, Number(row.bytes ?? 0));
  return {
    inRecovery: row.recovery,
    lagBytes,
    lagSeconds: lagBytes > 0 ? Math.max(0, row.seconds ?? 0) : 0,
    replayPaused: row.paused ?? false,
  };
}

/** Every version's checkpoint and filter on the primary, keyed `name@version`. */
async function primaryCheckpoints(db: Queryable, q: string) {
  const { rows } = await db.query<{
    key: string;
    checkpoint: string;
    types: string[] | null;
    stream_prefix: string | null;
  }>(
    `SELECT name || '@' || version AS key, checkpoint_tx::text || ':' || checkpoint_position::text AS checkpoint,
            types, stream_prefix
     FROM ${q}.processors WHERE retired_at IS NULL`,
  );
  return new Map(rows.map((row) => [row.key, row]));
}

/**
 * Per running version: is it waiting for the replica? Two index probes per version (one
 * on each server), so status stays cheap however long the log.
 */
export async function replicaWaits(
  primary: Queryable,
  replica: Queryable,
  q: string,
  statuses: ProcessorStatus[],
): Promise<Map<string, ReplicaWait>> {
  const onPrimary = await primaryCheckpoints(primary, q);
  const waits = new Map<string, ReplicaWait>();
  for (const status of statuses) {
    const key = `${status.name}@${status.version}`;
    const row = onPrimary.get(key);
    if (!row) continue;
    const waiting =
      (await eventsAfter(primary, q, row.checkpoint, row.types, row.stream_prefix, { readableNow: true })) &&
      !(await eventsAfter(replica, q, row.checkpoint, row.types, row.stream_prefix, { readableNow: true }));
    waits.set(key, { primaryCheckpoint: row.checkpoint, waiting });
  }
  return waits;
}

/** Status rows with the replica's view attached (what `status()` and the dashboard return with readUrl). */
export async function withReplicaView(
  statuses: ProcessorStatus[],
  primary: Queryable,
  replica: Queryable,
  q: string,
): Promise<ProcessorStatus[]> {
  const [view, waits] = await Promise.all([
    replicaView(primary, replica),
    replicaWaits(primary, replica, q, statuses),
  ]);
  return statuses.map((status) => {
    const wait = waits.get(`${status.name}@${status.version}`);
    return { ...status, readReplica: { ...view, ...(wait ?? { primaryCheckpoint: null, waiting: false }) } };
  });
}
