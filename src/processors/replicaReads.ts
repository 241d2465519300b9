/**
 * The primary's side of page reads on a replica (`readUrl`). A page read there and the
 * checkpoint saved here are two snapshots, which is safe because:
 * - the replica's `pg_snapshot_xmin` is its own horizon: every transaction below it had
 *   ended in the WAL replayed, and nothing can later commit below it (a physical replica
 *   replays the primary's transactions with the primary's ids);
 * - the page moves the checkpoint only to what it read: its last event, or the replica's
 *   horizon when it was caught up there, and saveCheckpoint moves it only from the
 *   checkpoint the page read after (compare-and-set on the primary);
 * - a checkpoint ahead of the replica (a replica re-created from an older backup, reads
 *   switched from the primary) reads nothing and keeps the checkpoint — a checkpoint never
 *   moves back — so the processor waits for the replica instead of skipping;
 * - a page the primary does not hold as read (tx ids rewritten by `events rebase-tx-ids`,
 *   which the replica has not replayed yet) is not applied: the run waits for the replica.
 */
import type { Queryable } from '../db/queryable.js';
import { OutbatchError } from '../errors.js';

/** The replica's horizon is past the primary's: it is not a replica of this primary's timeline. */
export class ReplicaAheadError extends OutbatchError {
  constructor(message: string) {
    super('OUTBATCH_REPLICA_AHEAD', message);
  }
}

/**
 * Checks, in the page's transaction on the primary, that the checkpoint about to be saved
 * is below the primary's own horizon. A faithful replica's horizon never passes the
 * primary's, so this only fails for a server that is not (or no longer) a replica of this
 * primary — one left on the old timeline after a failover, say. Saving such a checkpoint
 * would skip, for good, the events the primary gives those transaction ids later.
 * Reply lost or refused: it only reads, so the page's transaction fails and rolls back with
 * its effects; the run is retried from the same checkpoint.
 */
export async function checkBelowPrimaryHorizon(tx: Queryable, txId: bigint): Promise<void> {
  const { rows } = await tx.query<{ ok: boolean; xmin: string }>(
    `SELECT $1::text::xid8 < pg_snapshot_xmin(pg_current_snapshot()) AS ok,
            pg_snapshot_xmin(pg_current_snapshot())::text AS xmin`,
    [txId.toString()],
  );
  if (!rows[0]?.ok) {
    throw new ReplicaAheadError(
      `the readUrl server has read up to transaction ${txId}, past the primary's horizon ${rows[0]?.xmin}: it is not a replica of this primary (a failover left it on the old timeline?); re-create it from the primary, see ops/runbooks/database-failover.md`,
    );
  }
}

/**
 * Whether the primary holds a page read on the replica under the same ids: its first and
 * last events, at the same (tx_id, position). A rebase-tx-ids the replica has not replayed
 * yet rewrote the checkpoint here to a small id but left the replica's events under their
 * old, larger ones: read after the rebased checkpoint, the replica hands back events the
 * processor already applied, and saving their old ids would then skip the rebased ones
 * (found by review). The rebase moves every id at once, so both ends of a stale page
 * differ; two index probes per page, not one per event. Reply lost or refused: it only
 * reads, so the page's transaction fails and rolls back; the run is retried.
 */
export async function pageOnPrimary(
  tx: Queryable,
  q: string,
  first: { txId: bigint; position: bigint },
  last: { txId: bigint; position: bigint },
): Promise<boolean> {
  const { rows } = await tx.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${q}.events
     WHERE (tx_id, position) IN (($1::text::xid8, $2::bigint), ($3::text::xid8, $4::bigint))`,
    [first.txId.toString(), first.position.toString(), last.txId.toString(), last.position.toString()],
  );
  return rows[0]?.n === (first.position === last.position ? 1 : 2);
}
