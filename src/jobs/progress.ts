/** Progress reports (`ctx.progress`), in batches: the latest value per running claim. */

import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { ValidationError } from '../errors.js';
import { storable } from '../json.js';

export interface ProgressReport {
  id: string;
  /** The claim that reported it (the job's attempt count when claimed). */
  attempt: number;
  value: number;
  message: string | null;
}

const MESSAGE_MAX = 500;

/** Checks `ctx.progress`'s arguments: a ValidationError naming what was wrong, nothing stored. */
export function checkProgress(value: unknown, message: unknown): { value: number; message: string | null } {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > 100) {
    throw new ValidationError(
      `progress ${typeof value === 'number' ? value : (JSON.stringify(value) ?? String(value))} is invalid: expected a number from 0 to 100 (a percentage)`,
    );
  }
  // Stored as `real`: rounded to it here, as PostgreSQL would, except that PostgreSQL
  // refuses a value below real's range ("1e-50" is out of range for type real) rather
  // than rounding it to 0 — and the refusal took every job's report in that write with it.
  const stored = Math.fround(value);
  if (message === undefined || message === null) return { value: stored, message: null };
  if (typeof message !== 'string' || message.length > MESSAGE_MAX || !storable(message)) {
    throw new ValidationError(
      `progress message is invalid: expected a string of at most ${MESSAGE_MAX} characters without NUL or lone surrogates`,
    );
  }
  return { value: stored, message };
}

/**
 * Writes the reports; returns the ids written. Only the claim that reported touches the
 * row: still `doing` for this worker, or already ended by that claim (its final value,
 * written just after the completion, stays on a kept `succeeded` row) — never a row back
 * in `todo` or claimed again (another attempt count).
 *
 * SKIP LOCKED, in id order: a row that an outcome batch is completing right now is skipped
 * (the caller tries it again on its next write) rather than waited for, so a progress
 * write never holds up an outcome, and two statements never lock the same rows in
 * opposite orders.
 *
 * Reply lost: written or not; the caller sends the reports again unless newer ones came
 * (writing a value twice changes nothing). Refused: the caller logs it and drops the batch
 * (values are checked before they get here; nothing else can be wrong with them).
 */
export async function writeProgress(
  db: Queryable,
  schema: string,
  workerId: string,
  reports: ProgressReport[],
): Promise<string[]> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<{ id: string }>(
    `WITH target AS (
       SELECT j.id, p.value, p.message
       FROM unnest($1::bigint[], $2::int[], $3::real[], $4::text[]) AS p(id, attempt, value, message)
       JOIN ${s}.jobs j ON j.id = p.id AND j.attempts = p.attempt
       WHERE j.status <> 'todo' AND (j.status <> 'doing' OR j.worker_id = $5)
       ORDER BY j.id
       FOR UPDATE OF j SKIP LOCKED
     )
     UPDATE ${s}.jobs j SET progress = t.value, progress_message = t.message, progress_at = now()
     FROM target t
     WHERE j.id = t.id
     RETURNING j.id::text`,
    [
      reports.map((r) => r.id),
      reports.map((r) => r.attempt),
      reports.map((r) => r.value),
      reports.map((r) => r.message),
      workerId,
    ],
  );
  return rows.map((row) => row.id);
}
