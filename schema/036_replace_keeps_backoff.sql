-- A 'replace' no longer brings a job waiting out its retry backoff forward (034 set its
-- run_at to the new defer's, now or the delay, whatever the backoff). The replaced job keeps
-- its attempt count (docs/debounce.md), so with 034 a burst of replaces during an outage ran
-- the job back to back, each run counting an attempt, and dead-lettered it within seconds
-- however long the task's backoff (test/jobs/debounce.test.ts, "keeps a retry-waiting job's
-- backoff"). Now a job that has been attempted (attempts > 0: it failed and waits to retry)
-- takes the later of its backoff and the new run time: the new args wait for the retry, and
-- a debounce can still push it further out. A job never attempted is replaced as before.
--
-- The same single statement; no extra round trip or read. Reply lost or refused: as 034.
CREATE OR REPLACE FUNCTION defer_job(
  task text,
  args jsonb DEFAULT '{}'::jsonb,
  queue text DEFAULT NULL,
  run_at timestamptz DEFAULT NULL,
  priority integer DEFAULT NULL,
  lock text DEFAULT NULL,
  queueing_lock text DEFAULT NULL,
  max_attempts integer DEFAULT NULL,
  on_conflict text DEFAULT 'error',
  group_key text DEFAULT NULL
) RETURNS TABLE (id bigint, enqueued boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
  known tasks%ROWTYPE;
  new_id bigint;
  existing_id bigint;
  existing_task text;
  inserted boolean;
  due_queue text;
BEGIN
  IF defer_job.task IS NULL OR defer_job.task = '' THEN
    RAISE EXCEPTION 'defer_job: task is required' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF defer_job.on_conflict IS NULL OR defer_job.on_conflict NOT IN ('error', 'ignore', 'replace', 'replace-args') THEN
    RAISE EXCEPTION 'defer_job: on_conflict % is invalid: expected ''error'', ''ignore'', ''replace'' or ''replace-args''', defer_job.on_conflict
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF defer_job.queue IS NULL OR defer_job.priority IS NULL OR defer_job.max_attempts IS NULL THEN
    SELECT * INTO known FROM tasks t WHERE t.name = defer_job.task;
  END IF;
  IF defer_job.queueing_lock IS NULL THEN
    IF defer_job.on_conflict IN ('replace', 'replace-args') THEN
      RAISE EXCEPTION 'defer_job: on_conflict % needs a queueing_lock: it replaces the job waiting with that lock', defer_job.on_conflict
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO jobs AS j (task, args, queue, run_at, priority, lock, max_attempts, group_key)
    VALUES (
      defer_job.task,
      coalesce(defer_job.args, '{}'::jsonb),
      coalesce(defer_job.queue, known.queue, 'default'),
      coalesce(defer_job.run_at, now()),
      coalesce(defer_job.priority, known.priority, 0),
      defer_job.lock,
      coalesce(defer_job.max_attempts, known.max_attempts, 5),
      defer_job.group_key
    )
    RETURNING j.id INTO new_id;
    RETURN QUERY SELECT new_id, true;
    RETURN;
  END IF;
  IF defer_job.on_conflict IN ('replace', 'replace-args') THEN
    INSERT INTO jobs AS j (task, args, queue, run_at, priority, lock, queueing_lock, max_attempts, group_key)
    VALUES (
      defer_job.task,
      coalesce(defer_job.args, '{}'::jsonb),
      coalesce(defer_job.queue, known.queue, 'default'),
      coalesce(defer_job.run_at, now()),
      coalesce(defer_job.priority, known.priority, 0),
      defer_job.lock,
      defer_job.queueing_lock,
      coalesce(defer_job.max_attempts, known.max_attempts, 5),
      defer_job.group_key
    )
    ON CONFLICT (queueing_lock) WHERE status = 'todo' AND queueing_lock IS NOT NULL DO UPDATE
    SET args = excluded.args,
        run_at = CASE
          WHEN defer_job.on_conflict = 'replace-args' THEN j.run_at
          WHEN j.attempts > 0 THEN greatest(excluded.run_at, j.run_at)
          ELSE excluded.run_at
        END,
        updated_at = now()
    WHERE j.task = excluded.task
    RETURNING j.id, j.xmax = 0, CASE WHEN j.run_at <= now() THEN j.queue END
    INTO new_id, inserted, due_queue;
    IF new_id IS NULL THEN
      SELECT j.id, j.task INTO existing_id, existing_task FROM jobs j
      WHERE j.queueing_lock = defer_job.queueing_lock AND j.status = 'todo';
      RAISE EXCEPTION 'a job with queueing lock % is already enqueued (job %) for task %: on_conflict % replaces only a waiting job of the same task',
          defer_job.queueing_lock, existing_id, existing_task, defer_job.on_conflict
        USING ERRCODE = 'unique_violation', HINT = 'outbatch:already_enqueued',
          DETAIL = json_build_object('existing_id', existing_id::text, 'queueing_lock', defer_job.queueing_lock,
                                     'task', existing_task)::text;
    END IF;
    IF NOT inserted AND due_queue IS NOT NULL
       AND EXISTS (SELECT 1 FROM workers w WHERE w.idle AND (w.queues IS NULL OR due_queue = ANY (w.queues))) THEN
      PERFORM pg_notify(current_schema() || '_jobs', due_queue);
    END IF;
    RETURN QUERY SELECT new_id, inserted;
    RETURN;
  END IF;
  -- A queueing-lock conflict may meet a job that leaves todo before we read it: try again.
  FOR i IN 1..5 LOOP
    INSERT INTO jobs AS j (task, args, queue, run_at, priority, lock, queueing_lock, max_attempts, group_key)
    VALUES (
      defer_job.task,
      coalesce(defer_job.args, '{}'::jsonb),
      coalesce(defer_job.queue, known.queue, 'default'),
      coalesce(defer_job.run_at, now()),
      coalesce(defer_job.priority, known.priority, 0),
      defer_job.lock,
      defer_job.queueing_lock,
      coalesce(defer_job.max_attempts, known.max_attempts, 5),
      defer_job.group_key
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
