/** The newest events matching a filter (`events tail`). */
import { quoteSchema } from '../db/identifiers.js';
import { runForArrays } from '../db/prepared.js';
import type { Queryable } from '../db/queryable.js';
import { checkLimit, type EventFilter, filterParams } from './filter.js';
import { EVENT_COLUMNS, type StoredEvent, toStoredEvent } from './storedEvent.js';
import type { Upcasters } from './upcast.js';

/** The newest `limit` gap-safe events matching the filter, oldest first (`events tail`). */
export function makeLast(deps: { pool: () => Promise<Queryable>; schema: string; upcasters: Upcasters }) {
  const sql = `
    SELECT ${EVENT_COLUMNS} FROM (
      SELECT * FROM ${quoteSchema(deps.schema)}.events
      WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
        AND ($1::text[] IS NULL OR type = ANY ($1::text[]))
        AND ($2::text IS NULL OR starts_with(stream, $2::text))
      ORDER BY tx_id DESC, position DESC
      LIMIT $3
    ) e
    ORDER BY e.tx_id, e.position`;
  return async function last(options: EventFilter & { limit?: number } = {}): Promise<StoredEvent[]> {
    const limit = checkLimit(options.limit ?? 20);
    const [types, prefix] = filterParams(options);
    const rows = await runForArrays(await deps.pool(), sql, [types, prefix, limit]);
    const events = rows.map(toStoredEvent);
    deps.upcasters.apply(events);
    return events;
  };
}
