/** The head of the log: the last event a gap-safe reader can see. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { type Checkpoint, START_CHECKPOINT } from './checkpoint.js';

export interface Head {
  /** Checkpoint of the last event a reader can see now (`"0:0"` when there is none). */
  checkpoint: Checkpoint;
  /** Its position (0 when there is none). */
  position: bigint;
}

/** The last gap-safe event: where a reader that is caught up stands. */
export function makeHead(deps: { pool: () => Promise<Queryable>; schema: string }) {
  const sql = `
    SELECT tx_id::text AS tx_id, position::text AS position FROM ${quoteSchema(deps.schema)}.events e
    WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY e.tx_id DESC, e.position DESC
    LIMIT 1`;
  return async function head(options: { client?: Queryable } = {}): Promise<Head> {
    const db = options.client ?? (await deps.pool());
    const row = (await db.query<{ tx_id: string; position: string }>(sql)).rows[0];
    return row
      ? { checkpoint: `${row.tx_id}:${row.position}`, position: BigInt(row.position) }
      : { checkpoint: START_CHECKPOINT, position: 0n };
  };
}
