/** Gap-safe reading: a page of events after a checkpoint, in (tx_id, position) order. */
import { quoteSchema } from '../db/identifiers.js';
import { runForArrays } from '../db/prepared.js';
import type { Queryable } from '../db/queryable.js';
import { archivedEventsError } from './archivedHorizon.js';
import {
  type Checkpoint,
  formatCheckpoint,
  horizonCheckpoint,
  laterCheckpoint,
  parseCheckpoint,
  START_CHECKPOINT,
} from './checkpoint.js';
import { checkLimit, type EventFilter, filterParams } from './filter.js';
import { EVENT_COLUMNS, EXTRA_COLUMN, type StoredEvent, toStoredEvent } from './storedEvent.js';
import type { Upcasters } from './upcast.js';

/** How many page sizes of unfiltered reads are kept as prepared statements. */
const PREPARED_SIZES = 8;

export interface ReadOptions extends EventFilter {
  /** Read events after this checkpoint (default: from the start). */
  after?: Checkpoint;
  /** Page size, 1 to 100,000 (default 1000). */
  limit?: number;
  /** A client inside your transaction (a processor's page). */
  client?: Queryable;
  /** Who reads, for an ArchivedEventsError's message (`processor "name" reading`). */
  reader?: string;
  /** The processor reading, for an ArchivedEventsError's way out (its replay). */
  processor?: string;
}

export interface ReadPage {
  events: StoredEvent[];
  /** Pass it as `after` to read on. Moves even when a filter matched nothing. */
  checkpoint: Checkpoint;
  /** True when fewer than `limit` events were returned: the reader is at the head for now. */
  caughtUp: boolean;
}

// The checkpoint goes in as `(SELECT $1)`, a value the planner cannot see. Seen, it made
// a partitioned log's plans go wrong: inside the newest large transaction (a bulk append
// or an import of a million events in one transaction, the highest tx_id ANALYZE saw)
// `(tx_id, position) > (that tx, …)` is estimated at about one row per partition, and the
// planner sorted every remaining row of every partition for each page instead of merging
// the partitions' index scans: 300 ms a page, 4,600 events/s where the single table read
// 386,000 (ops/bench/eventLog.ts). Unseen, it gets the default estimate, and the merge.
function pageText(q: string, filters: string, limit: string): string {
  return `
  (SELECT ${EVENT_COLUMNS}, NULL::xid8 AS xmin, NULL::boolean AS archived
   FROM ${q}.events e
   WHERE (e.tx_id, e.position) > ((SELECT $1::xid8), (SELECT $2::bigint))
     AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot())${filters}
   ORDER BY e.tx_id, e.position
   LIMIT ${limit})
  UNION ALL
  SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, pg_snapshot_xmin(pg_current_snapshot()),
         (SELECT ($1::xid8, $2::bigint) < (l.archived_through_tx, l.archived_through_position)
          FROM ${q}.event_log l)`;
}

/** The statement of an unfiltered page of `limit` events (exported for the plan's test). */
export function unfilteredPageText(schema: string, limit: number): string {
  return pageText(quoteSchema(schema), '', String(checkLimit(limit)));
}

/**
 * Gap-safe: positions are taken at insert but become visible at commit, so a reader
 * remembering "last position" would skip an event whose transaction commits late.
 * Ordering by (tx_id, position) and reading only below the oldest transaction still
 * running (the snapshot's xmin) means nothing can ever appear behind a checkpoint.
 * The snapshot's xmin comes back with the page, in a last row of its own: a CTE with a
 * lateral join did the same but cost more than the page itself to plan.
 *
 * That row also says whether `after` is below the archived horizon (archivedHorizon.ts):
 * then the page would silently lack archived events, and the read is refused. In the same
 * statement, so under the same snapshot as the page: an archive that commits between two
 * pages is seen by the next one, never by half of one (its DROP waits for this statement).
 */
export function makeRead(deps: {
  pool: () => Promise<Queryable>;
  schema: string;
  /**
   * Brings events to their type's current version. null: the events as stored, for
   * processors, which upcast each page themselves so a failing upcaster is that event's failure.
   */
  upcasters: Upcasters | null;
}) {
  const q = quoteSchema(deps.schema);
  // A page without a type or stream filter (every processor that reads all types, follow(),
  // replay) is prepared by name per page size, with the size written into the text (a whole
  // number checkLimit has checked), so that its generic plan costs what a custom one does
  // and PostgreSQL keeps it after five executions: planned once per connection, where a
  // custom plan would be planned for every page across every partition. With `LIMIT $3` the
  // generic plan was costed for a tenth of the log and never chosen.
  // A filtered page stays unnamed and planned each time, so the planner sees the types and
  // may take the (type, tx_id, position) index that a generic plan could not count on.
  const unfiltered = new Map<number, string>();
  const filtered = pageText(
    q,
    `
       AND ($4::text[] IS NULL OR e.type = ANY ($4::text[]))
       AND ($5::text IS NULL OR starts_with(e.stream, $5::text))`,
    '$3',
  );
  const name = `outbatch_read_${deps.schema}`;

  /** `queryTimeoutMs`: outbatch's own reads (a processor's pages) are abandoned after it. */
  return async function read(options: ReadOptions = {}, queryTimeoutMs?: number): Promise<ReadPage> {
    const after = parseCheckpoint(options.after ?? START_CHECKPOINT);
    const limit = checkLimit(options.limit ?? 1000);
    const [types, prefix] = filterParams(options);
    const db = options.client ?? (await deps.pool());
    const position = [after.txId.toString(), after.position.toString()];
    let rows: unknown[][];
    if (types === null && prefix === null) {
      // A few page sizes are prepared (a processor's batchSize, follow's); a caller varying
      // it on every call gets unnamed statements rather than one per size on every connection.
      let text = unfiltered.get(limit);
      const prepare = text !== undefined || unfiltered.size < PREPARED_SIZES;
      text ??= pageText(q, '', String(limit));
      if (prepare) unfiltered.set(limit, text);
      rows = await runForArrays(db, text, position, prepare ? `${name}_${limit}` : undefined, queryTimeoutMs);
    } else {
      rows = await runForArrays(db, filtered, [...position, limit, types, prefix], undefined, queryTimeoutMs);
    }
    // One row, with no position, carries the snapshot's xmin (one statement, so one snapshot).
    const at = rows.findLastIndex((row) => row[0] === null);
    const extra = rows.splice(at, 1)[0]!;
    const xmin = extra[EXTRA_COLUMN] as string;
    if (extra[EXTRA_COLUMN + 1] === true) {
      const asked = `${options.reader ?? 'reading'} after checkpoint "${formatCheckpoint(after)}"`;
      throw await archivedEventsError(db, quoteSchema(deps.schema), asked, options.processor);
    }
    const events = rows.map(toStoredEvent);
    deps.upcasters?.apply(events);
    const last = events.at(-1);
    let next = last ? { txId: last.txId, position: last.position } : after;
    const caughtUp = events.length < limit;
    // Everything matching below xmin was in this page, so the reader may skip to the
    // horizon: a filter that matches rarely does not rescan the same events every time.
    if (caughtUp) next = laterCheckpoint(next, horizonCheckpoint(BigInt(xmin)));
    return { events, checkpoint: formatCheckpoint(next), caughtUp };
  };
}
