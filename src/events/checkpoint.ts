/** Checkpoints: where a reader is in the log, as `"<tx_id>:<position>"` text. */
import { ValidationError } from '../errors.js';

/**
 * Where a reader is in the log: the `(tx_id, position)` of the last event it handled,
 * written `"<tx_id>:<position>"` so users can store, print and pass it back.
 * Ordering by tx_id first is what makes reads gap-safe (see read.ts).
 */
export type Checkpoint = string;

export interface CheckpointParts {
  txId: bigint;
  position: bigint;
}

/** Before the first event. */
export const START_CHECKPOINT: Checkpoint = '0:0';

// Both parts are unsigned 64-bit in PostgreSQL (xid8, bigint identity).
const MAX_XID8 = (1n << 64n) - 1n;
const MAX_POSITION = (1n << 63n) - 1n;
const FORMAT = /^(\d{1,20}):(\d{1,19})$/;

export function parseCheckpoint(text: unknown): CheckpointParts {
  const match = typeof text === 'string' ? FORMAT.exec(text) : null;
  const txId = match ? BigInt(match[1]!) : -1n;
  const position = match ? BigInt(match[2]!) : -1n;
  if (!match || txId > MAX_XID8 || position > MAX_POSITION) {
    throw new ValidationError(
      `checkpoint ${JSON.stringify(text)} is invalid: expected "<tx_id>:<position>" (two whole numbers, like "7311:42"), or "${START_CHECKPOINT}" for the start`,
    );
  }
  return { txId, position };
}

export function formatCheckpoint(parts: CheckpointParts): Checkpoint {
  return `${parts.txId}:${parts.position}`;
}

/** The later of two checkpoints, in the readers' (tx_id, position) order. */
export function laterCheckpoint(a: CheckpointParts, b: CheckpointParts): CheckpointParts {
  if (a.txId !== b.txId) return a.txId > b.txId ? a : b;
  return a.position >= b.position ? a : b;
}

/**
 * Every transaction below the snapshot's xmin has ended, so nothing can ever be added
 * before this point: a reader that saw all matching events below xmin may move here.
 */
export function horizonCheckpoint(xmin: bigint): CheckpointParts {
  return { txId: xmin > 0n ? xmin - 1n : 0n, position: MAX_POSITION };
}
