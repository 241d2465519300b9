/** Rebasing stored transaction ids after a restore put them ahead of the server's. */
import os from 'node:os';
import type pg from 'pg';
import { quoteSchema } from '../db/identifiers.js';
import { assertMigrated } from '../db/migrate.js';
import { withTransaction } from '../db/transaction.js';
import { OutbatchError } from '../errors.js';

export interface RebaseResult {
  distinctIds: number;
  eventsUpdated: number;
  /** Processor versions whose checkpoint moved (every version: active, retired, paused, failed). */
  checkpointsUpdated: number;
  deadLettersUpdated: number;
  /** Transaction ids consumed to move the server past the rebased range. */
  consumed: number;
  highestNew: bigint;
}

// Headroom above the rebased range, so the server's next id is clearly ahead.
const MARGIN = 1000n;
const CONSUME_CHUNK = 10_000n;

/**
 * The documented way out of a TxIdHorizonError: an order-preserving rewrite of every stored
 * tx id (events, processor checkpoints, dead letters: the stored_tx_ids view) into 3…k+2
 * (k distinct ids), first consuming transaction ids while the server is not yet past that
 * range. Stop workers and appenders first: it refuses while a transaction that started
 * before it is still open (see below). Audited in audit_log.
 */
export async function rebaseTxIds(
  pool: pg.Pool,
  schema: string,
  onProgress?: (consumed: number, total: number) => void,
): Promise<RebaseResult> {
  const q = quoteSchema(schema);
  // A schema restored from an older outbatch would run an older rebase_tx_ids(), one that
  // leaves processor checkpoints behind: refuse until it is migrated.
  await assertMigrated(pool, schema);
  const { rows } = await pool.query<{ k: string; next: string }>(
    `SELECT (SELECT count(DISTINCT tx_id) FROM ${q}.stored_tx_ids)::text AS k,
            pg_snapshot_xmax(pg_current_snapshot())::text AS next`,
  );
  const k = BigInt(rows[0]!.k);
  const needed = k + 3n + MARGIN - BigInt(rows[0]!.next);
  let consumed = 0n;
  if (needed > 0n) {
    const client = await pool.connect();
    try {
      // These transactions write nothing worth an fsync each.
      await client.query('SET synchronous_commit TO off');
      while (consumed < needed) {
        const chunk = needed - consumed < CONSUME_CHUNK ? needed - consumed : CONSUME_CHUNK;
        await client.query(`CALL ${q}.consume_tx_ids($1)`, [chunk.toString()]);
        consumed += chunk;
        onProgress?.(Number(consumed), Number(needed));
      }
    } finally {
      await client.query('RESET synchronous_commit').catch(() => {});
      client.release();
    }
  }
  await waitForEarlierTransactions(pool, q);
  return withTransaction(pool, async (client) => {
    // A transaction that took its id before the rebase and appends after it would store a
    // tx id inside the rebased range, behind the rebased checkpoints: an event no processor
    // ever reads (found by review). The table lock only orders the inserts; it cannot give
    // such a transaction another id. So, with appends blocked, refuse while any open
    // transaction is at or below the highest new id.
    // Rewrites every stored tx id: as long as the log is big, whatever statement_timeout
    // the role carries (a managed service's default).
    await client.query('SET LOCAL statement_timeout = 0');
    await client.query(`LOCK TABLE ${q}.events IN SHARE ROW EXCLUSIVE MODE`);
    const open = await client.query<{ in_range: boolean; pids: string | null }>(
      `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                <= (SELECT count(DISTINCT tx_id) FROM ${q}.stored_tx_ids) + 2 AS in_range,
              (SELECT string_agg(pid::text, ', ' ORDER BY pid) FROM pg_stat_activity
               WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()) AS pids`,
    );
    if (open.rows[0]?.in_range) {
      throw new OutbatchError(
        'OUTBATCH_REBASE_BUSY',
        `rebase-tx-ids refused: transactions that started before it are still open after 30 s (pids ${open.rows[0].pids ?? 'unknown'}); an event they append would sort behind the rebased checkpoints and never be processed. Stop every appender and worker, let those transactions end, then run it again`,
      );
    }
    const result = await client.query<{
      distinct_ids: string;
      events_updated: string;
      checkpoints_updated: string;
      dead_letters_updated: string;
      highest_new: string;
    }>(
      `SELECT distinct_ids::text, events_updated::text, checkpoints_updated::text, dead_letters_updated::text,
              highest_new::text
       FROM ${q}.rebase_tx_ids()`,
    );
    const row = result.rows[0]!;
    await client.query(
      `INSERT INTO ${q}.audit_log (actor, host, action, subject, details) VALUES ($1, $2, 'events.rebase-tx-ids', 'events', $3)`,
      [os.userInfo().username, os.hostname(), { ...row, consumed: consumed.toString() }],
    );
    return {
      distinctIds: Number(row.distinct_ids),
      eventsUpdated: Number(row.events_updated),
      checkpointsUpdated: Number(row.checkpoints_updated),
      deadLettersUpdated: Number(row.dead_letters_updated),
      consumed: Number(consumed),
      highestNew: BigInt(row.highest_new),
    };
  });
}

const EARLIER_TRANSACTIONS_WAIT_MS = 30_000;

/**
 * Transactions that began before the consumption may hold ids inside the range the rebase
 * will use; new ones get ids above it, so waiting for the old ones to end is enough. Waited
 * for before the rebase takes its lock (an old transaction appending would otherwise wait
 * on the lock while the rebase waits on it); the rebase checks again under the lock.
 */
async function waitForEarlierTransactions(pool: pg.Pool, q: string): Promise<void> {
  const deadline = Date.now() + EARLIER_TRANSACTIONS_WAIT_MS;
  while (Date.now() < deadline) {
    const { rows } = await pool.query<{ clear: boolean }>(
      `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                > (SELECT count(DISTINCT tx_id) FROM ${q}.stored_tx_ids) + 2 AS clear`,
    );
    if (rows[0]?.clear) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
