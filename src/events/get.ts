/** One event by position (`events show`). */
import { quoteSchema } from '../db/identifiers.js';
import { runForArrays } from '../db/prepared.js';
import type { Queryable } from '../db/queryable.js';
import { ValidationError } from '../errors.js';
import { EVENT_COLUMNS, type StoredEvent, toStoredEvent } from './storedEvent.js';
import type { Upcasters } from './upcast.js';

/** One committed event by position (`events show`), or undefined. */
export function makeGet(deps: { pool: () => Promise<Queryable>; schema: string; upcasters: Upcasters }) {
  const sql = `SELECT ${EVENT_COLUMNS} FROM ${quoteSchema(deps.schema)}.events WHERE position = $1`;
  return async function get(position: bigint | number | string): Promise<StoredEvent | undefined> {
    const text = String(position);
    if (!/^\d{1,19}$/.test(text) || BigInt(text) > 9223372036854775807n) {
      throw new ValidationError(`position ${JSON.stringify(text)} is invalid: expected a whole number >= 0`);
    }
    const rows = await runForArrays(await deps.pool(), sql, [text]);
    if (!rows[0]) return undefined;
    const event = toStoredEvent(rows[0]);
    deps.upcasters.apply([event]);
    return event;
  };
}
