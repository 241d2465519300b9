/** The event log's shape for `outbatch events partitions`, the dashboard and /metrics: partitions, size, archived horizon. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import type { Checkpoint } from './checkpoint.js';
import { type EventsLayout, eventsLayout } from './partitioning.js';

export interface EventPartition {
  name: string;
  /** [lower, upper) in positions; null for events_overflow, the default partition. */
  lower: bigint | null;
  upper: bigint | null;
  /** PostgreSQL's estimate (reltuples, kept by vacuum and analyze): no count(*) over millions of rows. */
  estimatedEvents: number;
  /** Table, indexes and TOAST. */
  bytes: number;
}

export interface EventLogStatus {
  layout: EventsLayout;
  /** Oldest first; the default partition last. Empty when unpartitioned. */
  partitions: EventPartition[];
  /** The whole log: every partition with its indexes. */
  bytes: number;
  estimatedEvents: number;
  /** The highest position handed out so far. */
  reachedPosition: bigint;
  partitionSize: number;
  partitionsAhead: number;
  /** Readers must be at or past this checkpoint; null when nothing was archived. */
  archivedThrough: Checkpoint | null;
  /** Events waiting in events_overflow because partitions fell behind (doctor warns). */
  overflowEvents: number;
}

// reltuples is -1 for a table never vacuumed or analyzed (PostgreSQL 14+): shown as 0.
// The size and estimate of an unpartitioned events come from the table itself.
const STATUS = (q: string) => `
  SELECT l.partition_size::int8 AS partition_size, l.partitions_ahead,
         CASE WHEN l.archived_through_position > 0
              THEN l.archived_through_tx::text || ':' || l.archived_through_position END AS archived_through,
         (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM ${q}.events_position_seq)::text AS reached,
         (SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)
          FROM pg_inherits i WHERE i.inhparent = to_regclass($1))::int8 + pg_total_relation_size(to_regclass($1)) AS bytes,
         (SELECT greatest(c.reltuples, 0) FROM pg_class c WHERE c.oid = to_regclass($1))::int8 AS own_estimate
  FROM ${q}.event_log l`;
const PARTITIONS = (q: string) => `
  SELECT c.relname AS name, b.lower::text AS lower, b.upper::text AS upper,
         greatest(c.reltuples, 0)::int8 AS estimate, pg_total_relation_size(c.oid)::int8 AS bytes
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
  LEFT JOIN ${q}.event_partition_bounds b ON b.name = c.relname
  WHERE i.inhparent = to_regclass($1)
  ORDER BY b.lower NULLS LAST`;

export async function eventLogStatus(db: Queryable, schema: string): Promise<EventLogStatus> {
  const q = quoteSchema(schema);
  const events = `${q}.events`;
  const layout = await eventsLayout(db, schema);
  const status = (await db.query(STATUS(q), [events])).rows[0] as {
    partition_size: string;
    partitions_ahead: number;
    archived_through: string | null;
    reached: string;
    bytes: string;
    own_estimate: string;
  };
  const partitions: EventPartition[] =
    layout === 'partitioned'
      ? (await db.query(PARTITIONS(q), [events])).rows.map((row) => ({
          name: row.name as string,
          lower: row.lower === null ? null : BigInt(row.lower),
          upper: row.upper === null ? null : BigInt(row.upper),
          estimatedEvents: Number(row.estimate),
          bytes: Number(row.bytes),
        }))
      : [];
  // The overflow's count is exact: it is normally empty, and a non-empty one needs a number.
  const overflowEvents =
    layout === 'partitioned'
      ? Number((await db.query(`SELECT count(*)::int8 AS n FROM ${q}.events_overflow`)).rows[0]!.n)
      : 0;
  return {
    layout,
    partitions,
    bytes: Number(status.bytes),
    estimatedEvents:
      layout === 'partitioned'
        ? partitions.reduce((sum, p) => sum + p.estimatedEvents, 0)
        : Number(status.own_estimate),
    reachedPosition: BigInt(status.reached),
    partitionSize: Number(status.partition_size),
    partitionsAhead: status.partitions_ahead,
    archivedThrough: status.archived_through as Checkpoint | null,
    overflowEvents,
  };
}
