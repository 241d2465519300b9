-- The job queue: one table of jobs, the workers that run them, the tasks they know,
-- and per-task statistics. Semantics: DESIGN.md (Jobs). The hot path (claim, complete,
-- fail) is in src/jobs/*.ts, one statement each; defer_job() below is the one way to
-- enqueue, shared by the TypeScript API and any other language or trigger.

CREATE TABLE jobs (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  task text NOT NULL CHECK (task <> '' AND length(task) <= 200),
  queue text NOT NULL DEFAULT 'default' CHECK (queue ~ '^[A-Za-z0-9_.-]{1,100}$'),
  args jsonb NOT NULL DEFAULT '{}'::jsonb,
  -- 'succeeded' rows exist only when a task keeps them (keepSucceededFor); otherwise
  -- success deletes the row. 'scheduled' (todo, run_at in the future) and 'dirty'
  -- (doing, worker silent) are derived, never stored.
  status text NOT NULL DEFAULT 'todo'
    CHECK (status IN ('todo', 'doing', 'succeeded', 'failed', 'cancelled')),
  priority integer NOT NULL DEFAULT 0,
  run_at timestamptz NOT NULL DEFAULT now(),
  lock text CHECK (lock <> ''),
  queueing_lock text CHECK (queueing_lock <> ''),
  attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
  -- { message, stack } of the latest failure; `errors` keeps one entry per failed attempt.
  last_error jsonb,
  errors jsonb NOT NULL DEFAULT '[]'::jsonb,
  worker_id text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  finished_at timestamptz,
  -- Kept succeeded rows are purged by the workers' maintenance after this time.
  keep_until timestamptz
);

-- Claim order: priority first, then due time, then creation. Only todo rows are in it,
-- so it stays as small as the backlog.
CREATE INDEX jobs_claim ON jobs (priority DESC, run_at, id) WHERE status = 'todo';
-- At most one running job per lock (DESIGN: lock); the claim also checks it, this is the backstop.
CREATE UNIQUE INDEX jobs_lock_doing ON jobs (lock) WHERE status = 'doing' AND lock IS NOT NULL;
-- Same-lock jobs start in creation order: the claim looks for an earlier due todo with the lock.
CREATE INDEX jobs_lock_todo ON jobs (lock, id) WHERE status = 'todo' AND lock IS NOT NULL;
-- At most one waiting job per queueing lock (DESIGN: queueing_lock).
CREATE UNIQUE INDEX jobs_queueing_lock_todo ON jobs (queueing_lock)
  WHERE status = 'todo' AND queueing_lock IS NOT NULL;
-- Recovery and the dashboard's doing/dirty groups look up running jobs by worker.
CREATE INDEX jobs_doing ON jobs (worker_id) WHERE status = 'doing';
-- Dead letter and the other kept rows, by task, for `jobs list/retry --failed --task`.
CREATE INDEX jobs_kept ON jobs (status, task, updated_at) WHERE status IN ('failed', 'cancelled', 'succeeded');

-- Workers heartbeat here. A doing job whose worker row is missing, or silent for longer
-- than the stall timeout that worker declared, is dirty and recovered by any live worker.
CREATE TABLE workers (
  id text PRIMARY KEY,
  host text NOT NULL,
  pid integer NOT NULL,
  queues text[],
  concurrency integer NOT NULL,
  stall_timeout_ms integer NOT NULL CHECK (stall_timeout_ms > 0),
  started_at timestamptz NOT NULL DEFAULT now(),
  last_seen_at timestamptz NOT NULL DEFAULT now()
);

-- What workers know about each task, registered when a worker starts: deferring by name
-- (from a service that does not import the handler, or from SQL) takes the task's queue,
-- priority and retry budget from here, and recovery reads on_stall from here.
CREATE TABLE tasks (
  name text PRIMARY KEY,
  queue text NOT NULL,
  priority integer NOT NULL,
  max_attempts integer NOT NULL CHECK (max_attempts >= 1),
  on_stall text NOT NULL CHECK (on_stall IN ('retry', 'fail')),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Per task and minute, updated by the batched completion and failure statements, so
-- the dashboard and `jobs stats` read a few rows instead of scanning history.
CREATE TABLE task_stats (
  task text NOT NULL,
  minute timestamptz NOT NULL,
  succeeded bigint NOT NULL DEFAULT 0,
  retried bigint NOT NULL DEFAULT 0,
  failed bigint NOT NULL DEFAULT 0,
  duration_ms_sum double precision NOT NULL DEFAULT 0,
  duration_ms_max double precision NOT NULL DEFAULT 0,
  PRIMARY KEY (task, minute)
);

-- One NOTIFY per queue per statement, on channel "<schema>_jobs" with the queue as payload,
-- for jobs that are due now (scheduled ones are found by polling). PostgreSQL folds
-- identical notifications of one transaction into one.
CREATE FUNCTION notify_jobs() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  PERFORM pg_notify(current_schema() || '_jobs', s.queue)
  FROM (SELECT DISTINCT n.queue FROM new_jobs n WHERE n.run_at <= now()) s;
  RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify AFTER INSERT ON jobs
  REFERENCING NEW TABLE AS new_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION notify_jobs();

-- Enqueue one job. Returns (id, enqueued). With a queueing lock that already has a todo
-- job, on_conflict => 'ignore' returns that job's id with enqueued = false, and 'error'
-- (the default) raises unique_violation (23505) naming the existing job.
-- NULL queue/priority/max_attempts take the task's registered values, then defaults.
CREATE FUNCTION defer_job(
  task text,
  args jsonb DEFAULT '{}'::jsonb,
  queue text DEFAULT NULL,
  run_at timestamptz DEFAULT NULL,
  priority integer DEFAULT NULL,
  lock text DEFAULT NULL,
  queueing_lock text DEFAULT NULL,
  max_attempts integer DEFAULT NULL,
  on_conflict text DEFAULT 'error'
) RETURNS TABLE (id bigint, enqueued boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
  known tasks%ROWTYPE;
  new_id bigint;
  existing_id bigint;
BEGIN
  IF defer_job.task IS NULL OR defer_job.task = '' THEN
    RAISE EXCEPTION 'defer_job: task is required' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF defer_job.on_conflict IS NULL OR defer_job.on_conflict NOT IN ('error', 'ignore') THEN
    RAISE EXCEPTION 'defer_job: on_conflict % is invalid: expected ''error'' or ''ignore''', defer_job.on_conflict
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF defer_job.queue IS NULL OR defer_job.priority IS NULL OR defer_job.max_attempts IS NULL THEN
    SELECT * INTO known FROM tasks t WHERE t.name = defer_job.task;
  END IF;
  -- A queueing-lock conflict may meet a job that leaves todo before we read it: try again.
  FOR i IN 1..5 LOOP
    INSERT INTO jobs AS j (task, args, queue, run_at, priority, lock, queueing_lock, max_attempts)
    VALUES (
      defer_job.task,
      coalesce(defer_job.args, '{}'::jsonb),
      coalesce(defer_job.queue, known.queue, 'default'),
      coalesce(defer_job.run_at, now()),
      coalesce(defer_job.priority, known.priority, 0),
      defer_job.lock,
      defer_job.queueing_lock,
      coalesce(defer_job.max_attempts, known.max_attempts, 5)
    )
    ON CONFLICT (queueing_lock) WHERE status = 'todo' AND queueing_lock IS NOT NULL DO NOTHING
    RETURNING j.id INTO new_id;
    IF new_id IS NOT NULL THEN
      RETURN QUERY SELECT new_id, true;
      RETURN;
    END IF;
    SELECT j.id INTO existing_id FROM jobs j
    WHERE j.queueing_lock = defer_job.queueing_lock AND j.status = 'todo';
    IF existing_id IS NOT NULL THEN
      IF defer_job.on_conflict = 'error' THEN
        RAISE EXCEPTION 'a job with queueing lock % is already enqueued (job %)', defer_job.queueing_lock, existing_id
          USING ERRCODE = 'unique_violation', HINT = 'outbatch:already_enqueued',
            DETAIL = json_build_object('existing_id', existing_id::text, 'queueing_lock', defer_job.queueing_lock)::text;
      END IF;
      RETURN QUERY SELECT existing_id, false;
      RETURN;
    END IF;
  END LOOP;
  RAISE EXCEPTION 'defer_job: queueing lock % kept changing; try again', defer_job.queueing_lock
    USING ERRCODE = 'serialization_failure';
END
$$;

-- Jobs with their derived state, as operators see them: 'scheduled' is todo in the
-- future, 'dirty' is doing on a worker that stopped heartbeating. `jobs list`, `jobs
-- stats` and the dashboard read this.
CREATE VIEW job_states AS
SELECT j.*,
  CASE
    WHEN j.status = 'todo' AND j.run_at > now() THEN 'scheduled'
    WHEN j.status = 'doing' AND NOT EXISTS (
      SELECT 1 FROM workers w
      WHERE w.id = j.worker_id AND w.last_seen_at > now() - w.stall_timeout_ms * interval '1 millisecond')
      THEN 'dirty'
    ELSE j.status
  END AS state
FROM jobs j;
