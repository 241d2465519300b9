/** Housekeeping the workers do between claims: nothing here is on the hot path. */
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { type DurationInput, toMilliseconds } from '../duration.js';
import { ValidationError } from '../errors.js';
import { checkInteger } from './validate.js';

/** Deletes succeeded rows kept by `keepSucceededFor` once their time is up. */
export async function purgeSucceeded(db: Queryable, schema: string, now: Date | null): Promise<number> {
  const { rowCount } = await db.query(
    `DELETE FROM ${quoteSchema(schema)}.jobs
     WHERE status = 'succeeded' AND keep_until < coalesce($1::timestamptz, now())`,
    [now],
  );
  return rowCount ?? 0;
}

/**
 * Forgets workers silent for ten times their stall timeout that hold no job; their
 * jobs were recovered long before. A worker that comes back re-registers on heartbeat.
 */
export async function pruneWorkers(db: Queryable, schema: string, now: Date | null): Promise<number> {
  const s = quoteSchema(schema);
  const { rowCount } = await db.query(
    `DELETE FROM ${s}.workers w
     WHERE NOT ${s}.worker_is_live(w.last_seen_at, 10 * w.stall_timeout_ms, coalesce($1::timestamptz, now()))
       AND NOT EXISTS (SELECT 1 FROM ${s}.jobs j WHERE j.worker_id = w.id AND j.status = 'doing')`,
    [now],
  );
  return rowCount ?? 0;
}

const DAY_MS = 86_400_000;

/**
 * How long the history tables keep their rows. Each grows for as long as outbatch runs:
 * a task_stats row per task and minute, a schedule_ticks row per tick, an audit_log row
 * per operator action. `null` keeps a table's rows forever.
 */
export interface HistoryRetentionOptions {
  /** Per-task, per-minute outcome counts (`jobs stats`, the dashboard): default 30 days. */
  taskStats?: DurationInput | null;
  /** Enqueued schedule ticks: default 7 days; each schedule's newest tick is always kept. */
  scheduleTicks?: DurationInput | null;
  /** Operator actions (retries, cancellations, replays, promotions): default 90 days. */
  auditLog?: DurationInput | null;
  /** Rows deleted per table and pass at most (default 10 000): a pass never holds locks for long. */
  batchSize?: number;
}

export interface HistoryRetention {
  taskStatsMs: number | null;
  scheduleTicksMs: number | null;
  auditLogMs: number | null;
  batchSize: number;
}

export const DEFAULT_HISTORY_RETENTION: Readonly<HistoryRetention> = {
  taskStatsMs: 30 * DAY_MS,
  scheduleTicksMs: 7 * DAY_MS,
  auditLogMs: 90 * DAY_MS,
  batchSize: 10_000,
};

const RETENTION_KEYS = ['taskStats', 'scheduleTicks', 'auditLog', 'batchSize'];

/**
 * Checks the retention options once, at start. A retention under a day is refused: the
 * dashboard charts the last 24 h of task_stats, and a bare number is milliseconds, so
 * `taskStats: 30` is almost certainly a unit mistake.
 */
export function resolveHistoryRetention(options: HistoryRetentionOptions = {}): HistoryRetention {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ValidationError(
      `historyRetention ${JSON.stringify(options)} is invalid: expected an object like { taskStats: { days: 30 } }`,
    );
  }
  const unknown = Object.keys(options).find((key) => !RETENTION_KEYS.includes(key));
  if (unknown !== undefined) {
    throw new ValidationError(
      `historyRetention.${unknown} is not an option: expected ${RETENTION_KEYS.join(', ')}`,
    );
  }
  const keep = (value: DurationInput | null | undefined, fallback: number | null, what: string) => {
    if (value === undefined) return fallback;
    if (value === null) return null;
    const ms = toMilliseconds(value, `historyRetention.${what}`);
    if (ms < DAY_MS) {
      throw new ValidationError(
        `historyRetention.${what} (${ms} ms) is invalid: expected at least a day (e.g. { days: 30 }), or null to keep rows forever`,
      );
    }
    return ms;
  };
  const defaults = DEFAULT_HISTORY_RETENTION;
  return {
    taskStatsMs: keep(options.taskStats, defaults.taskStatsMs, 'taskStats'),
    scheduleTicksMs: keep(options.scheduleTicks, defaults.scheduleTicksMs, 'scheduleTicks'),
    auditLogMs: keep(options.auditLog, defaults.auditLogMs, 'auditLog'),
    batchSize: checkInteger(
      options.batchSize ?? defaults.batchSize,
      'historyRetention.batchSize',
      1,
      1_000_000,
    ),
  };
}

/**
 * Rows deleted per table by one pass; `denied`: this role may not delete there (the
 * worker role of ops/sql/roles.sql may only read and add to audit_log), `kept`: kept forever.
 */
export type Pruned = number | 'denied' | 'kept';

export interface PruneResult {
  taskStats: Pruned;
  scheduleTicks: Pruned;
  auditLog: Pruned;
  /** A table gave a full batch: older rows may remain for the next pass. */
  more: boolean;
}

/**
 * One bounded pass over the history tables: at most `batchSize` rows per table, each
 * table in its own statement (and transaction), so a large backlog is worked off over
 * several maintenance passes and no pass holds row locks or a long transaction for long.
 * Only rows past their retention are deleted; nothing else reads them (see each statement).
 * Faults: a batch whose reply was lost was deleted or not, and the next pass finds what is
 * left; a refused statement throws (the caller's pass fails and the next one tries again),
 * except a missing DELETE grant, which is an outcome (`denied`) and not worth a retry.
 */
export async function pruneHistory(
  db: Queryable,
  schema: string,
  now: Date | null,
  retention: HistoryRetention,
): Promise<PruneResult> {
  const limit = retention.batchSize;
  const run = async (keepMs: number | null, prune: typeof pruneScheduleTicks): Promise<Pruned> => {
    if (keepMs === null) return 'kept';
    try {
      return await prune(db, schema, now, keepMs, limit);
    } catch (error) {
      if ((error as { code?: string }).code === INSUFFICIENT_PRIVILEGE) return 'denied';
      throw error;
    }
  };
  const taskStats = await run(retention.taskStatsMs, pruneTaskStats);
  const scheduleTicks = await run(retention.scheduleTicksMs, pruneScheduleTicks);
  const auditLog = await run(retention.auditLogMs, pruneAuditLog);
  return {
    taskStats,
    scheduleTicks,
    auditLog,
    more: [taskStats, scheduleTicks, auditLog].some((pruned) => pruned === limit),
  };
}

const INSUFFICIENT_PRIVILEGE = '42501';

// The batches below: `ctid = ANY (ARRAY(subquery))` is a TID scan over at most `limit`
// rows the subquery found through an index (schema/026_history_retention.sql). A row the
// subquery picked that is updated before the DELETE reaches it moves to a new ctid and is
// left for the next pass: only rows no one writes any more are old enough to be picked.

/**
 * Per-task, per-minute counts older than `keepMs`. Completions and failures only write
 * the current minute's row, so a pruned minute is never counted into again; `jobs stats`
 * totals then cover the retention, not all time.
 */
export function pruneTaskStats(
  db: Queryable,
  schema: string,
  now: Date | null,
  keepMs: number,
  limit: number,
) {
  return deleteOlder(db, schema, 'task_stats', 'minute', now, keepMs, limit);
}

/**
 * Schedule ticks older than `keepMs`, and only those a scheduler can never plan again.
 * Why pruning keeps tick dedupe: a scheduler plans only ticks after its schedule's
 * `since` = coalesce(last_tick, first_seen_at), read under the schedule row's lock, and
 * `last_tick` only grows (greatest()) in the same transaction that inserts the ticks. So
 * a tick at or before the committed `last_tick` is below every future `since`: its row
 * guards nothing. A tick row of a schedule with no `last_tick` is never deleted. The
 * newest tick of each schedule is kept: `schedules list` shows its job and lateness.
 * Walks each schedule's primary-key range (schedules are few; their ticks are many).
 */
export async function pruneScheduleTicks(
  db: Queryable,
  schema: string,
  now: Date | null,
  keepMs: number,
  limit: number,
): Promise<number> {
  const s = quoteSchema(schema);
  const { rowCount } = await db.query(
    `DELETE FROM ${s}.schedule_ticks
     WHERE ctid = ANY (ARRAY(
       SELECT old.ctid
       FROM ${s}.schedules sc
       CROSS JOIN LATERAL (
         SELECT t.ctid FROM ${s}.schedule_ticks t
         WHERE t.schedule = sc.name
           AND t.tick <= sc.last_tick
           AND t.tick < coalesce($1::timestamptz, now()) - $2::float8 * interval '1 millisecond'
           AND t.tick < (SELECT max(n.tick) FROM ${s}.schedule_ticks n WHERE n.schedule = sc.name)
         LIMIT $3
       ) old
       LIMIT $3))`,
    [now, keepMs, limit],
  );
  return rowCount ?? 0;
}

/** Operator actions older than `keepMs` (`replay --history` lists the newest 200 of its kind). */
export function pruneAuditLog(
  db: Queryable,
  schema: string,
  now: Date | null,
  keepMs: number,
  limit: number,
) {
  return deleteOlder(db, schema, 'audit_log', 'at', now, keepMs, limit);
}

/** At most `limit` rows of `table` whose `column` is older than `keepMs` (names are constants). */
async function deleteOlder(
  db: Queryable,
  schema: string,
  table: 'task_stats' | 'audit_log',
  column: 'minute' | 'at',
  now: Date | null,
  keepMs: number,
  limit: number,
): Promise<number> {
  const s = quoteSchema(schema);
  const { rowCount } = await db.query(
    `DELETE FROM ${s}.${table}
     WHERE ctid = ANY (ARRAY(
       SELECT ctid FROM ${s}.${table}
       WHERE ${column} < coalesce($1::timestamptz, now()) - $2::float8 * interval '1 millisecond'
       LIMIT $3))`,
    [now, keepMs, limit],
  );
  return rowCount ?? 0;
}
