import type { Checkpoint } from './checkpoint.js';

/** An event as it is stored and read back. */
export interface StoredEvent<D = unknown> {
  /** Global, unique, increasing in insert order; gaps are normal (rolled back appends). */
  position: bigint;
  /** The appending transaction's id; readers order by (txId, position). */
  txId: bigint;
  stream: string;
  /** 1, 2, 3… within the stream, without gaps. */
  streamVersion: number;
  type: string;
  data: D;
  metadata: Record<string, unknown>;
  recordedAt: Date;
  idempotencyKey: string | null;
  /** `"<txId>:<position>"`: pass it to `read({ after })` to continue after this event. */
  checkpoint: Checkpoint;
}

/** The columns every event query selects, in the shape `toStoredEvent` reads. */
// node-postgres returns bigint and xid8 as strings already: no casts (they cost per row).
export const EVENT_COLUMNS =
  'position, tx_id, stream, stream_version, type, data, metadata, recorded_at, idempotency_key';

export interface EventRow {
  position: string;
  tx_id: string;
  stream: string;
  stream_version: string;
  type: string;
  data: unknown;
  metadata: Record<string, unknown>;
  recorded_at: Date;
  idempotency_key: string | null;
}

export function toStoredEvent(row: EventRow): StoredEvent {
  return {
    position: BigInt(row.position),
    txId: BigInt(row.tx_id),
    stream: row.stream,
    streamVersion: Number(row.stream_version),
    type: row.type,
    data: row.data,
    metadata: row.metadata,
    recordedAt: row.recorded_at,
    idempotencyKey: row.idempotency_key,
    checkpoint: `${row.tx_id}:${row.position}`,
  };
}
