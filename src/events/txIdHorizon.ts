/** The transaction-id horizon check: are stored tx ids ahead of the server's (a restore)? */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { TxIdHorizonError } from '../errors.js';

export interface TxIdHorizon {
  /** Highest transaction id stored: events, processor checkpoints, dead letters (0 when none). */
  highestStored: bigint;
  /** The id the server gives the next transaction. */
  nextServer: bigint;
}

/**
 * Reads both sides without taking a transaction id (pg_current_xact_id() would assign
 * one): the snapshot's xmax is the next id the server hands out. The stored side is every
 * table of stored_tx_ids, not only events: a restored schema whose events were pruned still
 * has checkpoints ahead of the server, and they would skip every new event. ORDER BY …
 * LIMIT 1 is answered from the top of each branch (an index scan on events).
 */
export async function readTxIdHorizon(db: Queryable, schema: string): Promise<TxIdHorizon> {
  const { rows } = await db.query<{ highest: string | null; next: string }>(
    `SELECT (SELECT tx_id FROM ${quoteSchema(schema)}.stored_tx_ids ORDER BY tx_id DESC LIMIT 1)::text AS highest,
            pg_snapshot_xmax(pg_current_snapshot())::text AS next`,
  );
  return { highestStored: BigInt(rows[0]!.highest ?? '0'), nextServer: BigInt(rows[0]!.next) };
}

/**
 * Throws when stored tx_ids are at or ahead of the server's: after a logical restore
 * (pg_dump into another cluster) new events would sort before old checkpoints and be
 * skipped. Doctor reports it; workers call it before they start.
 */
export async function checkTxIdHorizon(db: Queryable, schema: string): Promise<TxIdHorizon> {
  const horizon = await readTxIdHorizon(db, schema);
  if (horizon.highestStored >= horizon.nextServer) {
    throw new TxIdHorizonError(
      `schema "${schema}" stores transaction ids up to ${horizon.highestStored} but this server is at ${horizon.nextServer} (was the database restored with pg_dump?): new events would be skipped by readers and processors; stop the workers and run "outbatch events rebase-tx-ids --yes" (see docs/operations.md, "Restoring from a logical backup")`,
      horizon.highestStored,
      horizon.nextServer,
    );
  }
  return horizon;
}
