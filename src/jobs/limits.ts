/**
 * Queue limits as operators set and read them (`app.queues`, `outbatch queues`, the
 * dashboard): the queue_limits rows, each change written with its audit entry in one
 * statement. The claim reads them (claimLimited.ts); nothing here is on the hot path.
 */
import type { Actor } from '../audit.js';
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { ValidationError } from '../errors.js';

/** A rate limit as stored: at most `max` job starts per window of `perMs`. */
export interface StoredRate {
  max: number;
  perMs: number;
}

/** What to change; a field left out keeps its value, null removes that limit. */
export interface LimitsChange {
  concurrency?: number | null;
  groupConcurrency?: number | null;
  rate?: StoredRate | null;
  groupRate?: StoredRate | null;
}

export interface QueueLimits {
  queue: string;
  concurrency: number | null;
  groupConcurrency: number | null;
  rate: StoredRate | null;
  groupRate: StoredRate | null;
  /** No job of the queue starts before then (RateLimited, or `queues pause`). */
  pausedUntil: Date | null;
  /** Groups of the queue paused now. */
  groupsPaused: number;
  /** The queue's current rate window: starts so far, and when it opened. */
  windowUsed: number;
  windowStart: Date | null;
  running: number;
  waiting: number;
}

const FIELDS = ['concurrency', 'groupConcurrency', 'rate', 'groupRate'] as const;

/**
 * Upserts the fields given in `change` (the others keep their values), with its audit
 * entry, and deletes the row when nothing is left to enforce. Returns the queue's limits
 * after the change (undefined: none left).
 */
export async function setQueueLimits(
  db: Queryable,
  schema: string,
  queue: string,
  change: LimitsChange,
  by: Actor,
): Promise<QueueLimits | undefined> {
  const s = quoteSchema(schema);
  const given = FIELDS.filter((field) => change[field] !== undefined);
  await db.query(
    `WITH upserted AS (
       INSERT INTO ${s}.queue_limits AS l
         (queue, concurrency, group_concurrency, rate_max, rate_per_ms, group_rate_max, group_rate_per_ms)
       VALUES ($1, $2, $3, $4, $5, $6, $7)
       ON CONFLICT (queue) DO UPDATE SET
         concurrency = CASE WHEN 'concurrency' = ANY ($8::text[]) THEN excluded.concurrency ELSE l.concurrency END,
         group_concurrency = CASE WHEN 'groupConcurrency' = ANY ($8::text[])
           THEN excluded.group_concurrency ELSE l.group_concurrency END,
         rate_max = CASE WHEN 'rate' = ANY ($8::text[]) THEN excluded.rate_max ELSE l.rate_max END,
         rate_per_ms = CASE WHEN 'rate' = ANY ($8::text[]) THEN excluded.rate_per_ms ELSE l.rate_per_ms END,
         group_rate_max = CASE WHEN 'groupRate' = ANY ($8::text[]) THEN excluded.group_rate_max ELSE l.group_rate_max END,
         group_rate_per_ms = CASE WHEN 'groupRate' = ANY ($8::text[])
           THEN excluded.group_rate_per_ms ELSE l.group_rate_per_ms END,
         updated_at = now()
       RETURNING 1
     )
     INSERT INTO ${s}.audit_log (actor, host, action, subject, details)
     VALUES ($9, $10, 'queue.limits', 'queue:' || $1, $11::jsonb)`,
    [
      queue,
      change.concurrency ?? null,
      change.groupConcurrency ?? null,
      change.rate?.max ?? null,
      change.rate?.perMs ?? null,
      change.groupRate?.max ?? null,
      change.groupRate?.perMs ?? null,
      given,
      by.actor,
      by.host,
      JSON.stringify(Object.fromEntries(given.map((field) => [field, change[field]]))),
    ],
  );
  await dropIfEmpty(db, schema, queue);
  return (await listQueueLimits(db, schema, queue))[0];
}

/**
 * A row with nothing left to enforce goes, so the queue is claimed the plain way again. A
 * second statement: the one that changed the row cannot see its own change. If it fails,
 * the limited claim deletes such a row when it meets it.
 */
async function dropIfEmpty(db: Queryable, schema: string, queue: string): Promise<void> {
  const s = quoteSchema(schema);
  await db.query(
    `DELETE FROM ${s}.queue_limits l
     WHERE l.queue = $1 AND l.concurrency IS NULL AND l.group_concurrency IS NULL
       AND l.rate_max IS NULL AND l.group_rate_max IS NULL
       AND (l.paused_until IS NULL OR l.paused_until <= now())
       AND NOT EXISTS (SELECT 1 FROM ${s}.queue_groups g WHERE g.queue = l.queue AND g.paused_until > now())`,
    [queue],
  );
}

/**
 * Pauses the queue until `until` (or, with null, resumes it: the pause ends now, and its
 * groups' pauses too). A paused queue with no limits keeps a row only while paused.
 */
export async function pauseQueue(
  db: Queryable,
  schema: string,
  queue: string,
  until: Date | null,
  by: Actor,
): Promise<void> {
  // Found in review: a pause too long for a Date (`--for 99999999999999d`, `{ for: 1e20 }`,
  // the API's `for=`) reached PostgreSQL as "0NaN-NaN-..." and came back as its syntax error.
  if (until !== null && Number.isNaN(until.getTime())) {
    throw new ValidationError(
      `pause of queue "${queue}" is too long: expected a time before the year 275760`,
    );
  }
  const s = quoteSchema(schema);
  await db.query(
    `WITH paused AS (
       INSERT INTO ${s}.queue_limits AS l (queue, paused_until) VALUES ($1, $2)
       ON CONFLICT (queue) DO UPDATE SET paused_until = excluded.paused_until, updated_at = now()
       RETURNING 1
     ), groups_resumed AS (
       UPDATE ${s}.queue_groups g SET paused_until = NULL WHERE g.queue = $1 AND $2::timestamptz IS NULL
       RETURNING 1
     )
     INSERT INTO ${s}.audit_log (actor, host, action, subject, details)
     VALUES ($3, $4, CASE WHEN $2::timestamptz IS NULL THEN 'queue.resume' ELSE 'queue.pause' END, 'queue:' || $1,
             jsonb_build_object('until', $2::timestamptz))`,
    [queue, until, by.actor, by.host],
  );
  if (until === null) await dropIfEmpty(db, schema, queue);
}

/** Removes every limit and pause of the queue. Returns whether it had any. */
export async function clearQueueLimits(
  db: Queryable,
  schema: string,
  queue: string,
  by: Actor,
): Promise<boolean> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<{ cleared: boolean }>(
    `WITH cleared AS (
       DELETE FROM ${s}.queue_limits WHERE queue = $1 RETURNING 1
     ), groups_cleared AS (
       DELETE FROM ${s}.queue_groups WHERE queue = $1 RETURNING 1
     ), audited AS (
       INSERT INTO ${s}.audit_log (actor, host, action, subject, details)
       SELECT $2, $3, 'queue.clear', 'queue:' || $1, '{}'::jsonb WHERE EXISTS (SELECT 1 FROM cleared)
     )
     SELECT EXISTS (SELECT 1 FROM cleared) AS cleared`,
    [queue, by.actor, by.host],
  );
  return rows[0]?.cleared ?? false;
}

/**
 * The limited queues (or one), with their running and waiting jobs. Counts come from the
 * partial indexes on todo and doing rows, per limited queue only.
 */
export async function listQueueLimits(db: Queryable, schema: string, queue?: string): Promise<QueueLimits[]> {
  const s = quoteSchema(schema);
  const { rows } = await db.query<QueueLimits>(
    `SELECT l.queue, l.concurrency, l.group_concurrency AS "groupConcurrency",
            CASE WHEN l.rate_max IS NULL THEN NULL
                 ELSE jsonb_build_object('max', l.rate_max, 'perMs', l.rate_per_ms) END AS rate,
            CASE WHEN l.group_rate_max IS NULL THEN NULL
                 ELSE jsonb_build_object('max', l.group_rate_max, 'perMs', l.group_rate_per_ms) END AS "groupRate",
            CASE WHEN l.paused_until > now() THEN l.paused_until END AS "pausedUntil",
            (SELECT count(*) FROM ${s}.queue_groups g WHERE g.queue = l.queue AND g.paused_until > now())::int
              AS "groupsPaused",
            CASE WHEN l.rate_max IS NOT NULL AND l.window_start + l.rate_per_ms * interval '1 millisecond' > now()
                 THEN l.window_used ELSE 0 END AS "windowUsed",
            CASE WHEN l.rate_max IS NOT NULL AND l.window_start + l.rate_per_ms * interval '1 millisecond' > now()
                 THEN l.window_start END AS "windowStart",
            (SELECT count(*) FROM ${s}.jobs d WHERE d.status = 'doing' AND d.queue = l.queue)::int AS running,
            (SELECT count(*) FROM ${s}.jobs t WHERE t.status = 'todo' AND t.queue = l.queue)::int AS waiting
     FROM ${s}.queue_limits l
     WHERE $1::text IS NULL OR l.queue = $1
     ORDER BY l.queue`,
    [queue ?? null],
  );
  return rows.map((row) => ({
    ...row,
    rate: row.rate && { max: Number(row.rate.max), perMs: Number(row.rate.perMs) },
    groupRate: row.groupRate && { max: Number(row.groupRate.max), perMs: Number(row.groupRate.perMs) },
  }));
}
