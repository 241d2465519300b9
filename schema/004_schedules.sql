-- Schedules as last defined in code (kept after a schedule is removed, so its
-- history stays readable) and one row per enqueued tick. The primary key on
-- (schedule, tick) is what makes a tick enqueue exactly once across the cluster.
CREATE TABLE schedules (
  name text PRIMARY KEY,
  kind text NOT NULL CHECK (kind IN ('cron', 'every')),
  expression text NOT NULL,
  timezone text NOT NULL,
  task text NOT NULL,
  -- Ticks before this are never enqueued: a new schedule does not catch up on its own past.
  first_seen_at timestamptz NOT NULL,
  -- A scheduler with this schedule in its code ran then; stale means removed from code.
  last_seen_at timestamptz NOT NULL,
  last_tick timestamptz,
  last_enqueued_at timestamptz
);

CREATE TABLE schedule_ticks (
  schedule text NOT NULL,
  tick timestamptz NOT NULL,
  job_id bigint,
  enqueued_at timestamptz NOT NULL,
  -- How long after its time the tick was enqueued, for the late-schedule signal.
  late_ms bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (schedule, tick)
);
