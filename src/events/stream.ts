/** One stream's events in version order. */
import { quoteSchema } from '../db/identifiers.js';
import { runForArrays } from '../db/prepared.js';
import type { Queryable } from '../db/queryable.js';
import { ValidationError } from '../errors.js';
import { archivedEventsError } from './archivedHorizon.js';
import { checkLimit } from './filter.js';
import { EVENT_COLUMNS, type StoredEvent, toStoredEvent } from './storedEvent.js';
import type { Upcasters } from './upcast.js';

export interface StreamOptions {
  /** First version to return (default 1). */
  fromVersion?: number;
  /** At most this many events (default: all). */
  limit?: number;
  client?: Queryable;
}

/**
 * One stream in version order. No xmin filter: the stream row lock orders a stream's
 * appends by commit, so what is committed is a gap-free prefix of versions.
 */
export function makeStream(deps: { pool: () => Promise<Queryable>; schema: string; upcasters: Upcasters }) {
  const q = quoteSchema(deps.schema);
  // One statement, so one snapshot: the stream's version and its first stored version
  // agree (two statements let an append commit in between, which looked like an archive).
  const archivedSql = `
    SELECT l.archived_through_position > 0
           AND (SELECT s.version FROM ${q}.streams s WHERE s.stream = $1) >= $2
           AND coalesce((SELECT min(e.stream_version) FROM ${q}.events e WHERE e.stream = $1 AND e.stream_version >= $2) > $2, true)
           AS archived
    FROM ${q}.event_log l`;
  const sql = `
    SELECT ${EVENT_COLUMNS} FROM ${q}.events
    WHERE stream = $1 AND stream_version >= $2
    ORDER BY stream_version
    LIMIT $3`;
  return async function stream(name: string, options: StreamOptions = {}): Promise<StoredEvent[]> {
    if (typeof name !== 'string' || name.length === 0) {
      throw new ValidationError(`stream name is ${JSON.stringify(name)}: expected a non-empty string`);
    }
    const from = options.fromVersion ?? 1;
    if (!Number.isSafeInteger(from) || from < 1) {
      throw new ValidationError(`fromVersion is ${JSON.stringify(from)}: expected a whole number >= 1`);
    }
    const limit = options.limit === undefined ? null : checkLimit(options.limit);
    const db = options.client ?? (await deps.pool());
    const rows = await runForArrays(db, sql, [name, from, limit]);
    const events = rows.map(toStoredEvent);
    // Versions have no gaps: a first one above `from` (or none) while the stream is at or
    // past `from` means the versions before it were archived. Checked only then.
    if (events[0]?.streamVersion !== from) {
      const { rows: at } = await db.query<{ archived: boolean | null }>(archivedSql, [name, from]);
      if (at[0]?.archived === true) {
        throw await archivedEventsError(db, q, `reading stream "${name}" from version ${from}`);
      }
    }
    deps.upcasters.apply(events);
    return events;
  };
}
