/** The scheduler's statements: one per function, the validated schema the only interpolation. */
import type { Queryable } from '../db/queryable.js';
import type { Schedule } from './definition.js';

/**
 * Records the schedule as defined now and returns where its ticks start. The row lock
 * taken by the upsert serialises schedulers on one schedule, and RETURNING gives the
 * `last_tick` committed by whichever ran before us.
 */
export async function touchSchedule(
  db: Queryable,
  q: string,
  schedule: Schedule,
  task: string,
  now: Date,
): Promise<{ since: Date }> {
  const { rows } = await db.query<{ since: Date }>(
    `INSERT INTO ${q}.schedules AS s (name, kind, expression, timezone, task, first_seen_at, last_seen_at)
     VALUES ($1, $2, $3, $4, $5, $6, $6)
     ON CONFLICT (name) DO UPDATE
       SET kind = EXCLUDED.kind, expression = EXCLUDED.expression, timezone = EXCLUDED.timezone,
           task = EXCLUDED.task, last_seen_at = greatest(s.last_seen_at, EXCLUDED.last_seen_at)
     RETURNING coalesce(s.last_tick, s.first_seen_at) AS since`,
    [schedule.name, schedule.kind, schedule.expression, schedule.timezone, task, now],
  );
  return { since: rows[0]!.since };
}

/** Inserts the tick rows; returns only the ticks this caller inserted (the ones it must enqueue). */
export async function claimTicks(
  db: Queryable,
  q: string,
  schedule: string,
  ticks: Date[],
  now: Date,
): Promise<Date[]> {
  const { rows } = await db.query<{ tick: Date }>(
    `INSERT INTO ${q}.schedule_ticks (schedule, tick, enqueued_at, late_ms)
     SELECT $1, t, $3, greatest(0, floor(extract(epoch FROM ($3::timestamptz - t)) * 1000))
     FROM unnest($2::timestamptz[]) AS t
     ON CONFLICT (schedule, tick) DO NOTHING
     RETURNING tick`,
    [schedule, ticks, now],
  );
  return rows.map((row) => row.tick).sort((a, b) => a.getTime() - b.getTime());
}

export async function recordTickJob(
  db: Queryable,
  q: string,
  schedule: string,
  tick: Date,
  jobId: string | null,
) {
  await db.query(`UPDATE ${q}.schedule_ticks SET job_id = $3 WHERE schedule = $1 AND tick = $2`, [
    schedule,
    tick,
    jobId,
  ]);
}

export async function advanceSchedule(db: Queryable, q: string, schedule: string, lastTick: Date, now: Date) {
  await db.query(
    `UPDATE ${q}.schedules
     SET last_tick = greatest(last_tick, $2), last_enqueued_at = $3
     WHERE name = $1`,
    [schedule, lastTick, now],
  );
}

export interface ScheduleRow {
  name: string;
  kind: 'cron' | 'every';
  expression: string;
  timezone: string;
  task: string;
  first_seen_at: Date;
  last_seen_at: Date;
  last_tick: Date | null;
  last_enqueued_at: Date | null;
  last_job_id: string | null;
  last_late_ms: string | null;
  /** The last tick's job: its state, or `done` once a successful job's row was deleted. */
  last_outcome: string | null;
}

export async function listSchedules(db: Queryable, q: string): Promise<ScheduleRow[]> {
  const { rows } = await db.query<ScheduleRow>(
    `SELECT s.*, t.job_id::text AS last_job_id, t.late_ms::text AS last_late_ms,
            CASE WHEN t.job_id IS NULL THEN NULL ELSE coalesce(j.state, 'done') END AS last_outcome
     FROM ${q}.schedules s
     LEFT JOIN LATERAL (
       SELECT job_id, late_ms FROM ${q}.schedule_ticks WHERE schedule = s.name ORDER BY tick DESC LIMIT 1
     ) t ON true
     LEFT JOIN ${q}.job_states j ON j.id = t.job_id
     ORDER BY s.name`,
  );
  return rows;
}
