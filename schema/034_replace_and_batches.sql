-- Two features of issue 17: debounce (replace a waiting job) and batch tasks.
--
-- Debounce: defer_job() with on_conflict 'replace' or 'replace-args' updates the job
-- waiting (todo) with the queueing lock instead of returning it: 'replace' sets its args
-- and run_at to the new defer's, 'replace-args' its args only (the run time is kept, as
-- graphile-worker's job_key_mode 'preserve_run_at'). The waiting job keeps its id, task,
-- queue, priority, lock, attempts and created_at. Returns (id, false) for a replaced job:
-- enqueued is false because no job was added.
--
-- One INSERT ... ON CONFLICT DO UPDATE, so concurrent replaces of one lock never need the
-- retry loop of 'error'/'ignore': each waits for the row lock of the one before and then
-- updates the row (or, if a worker claimed it meanwhile, inserts a new waiting job), so
-- exactly one job waits and it holds the args of the last to commit. A job already running
-- (doing) is outside the unique index: it is never touched, and the defer enqueues a new
-- waiting job beside it, as any defer with that queueing lock would.
--
-- A replace that meets a waiting job of another task raises unique_violation (HINT
-- outbatch:already_enqueued, DETAIL with the other task): replacing its args with args
-- meant for a different handler would be wrong, and silently skipping would lose them.
--
-- The jobs_notify trigger fires on INSERT only. A replace that makes a scheduled job due
-- now (a 'replace' without run_at) wakes idle workers itself, with the trigger's condition.
--
-- The signature is 032's (a last group_key). A replace keeps the waiting job's group, as it
-- keeps its queue and priority.
--
-- 'error' and 'ignore' take the same statements as before (032), and a defer without a
-- queueing lock still one plain INSERT: the new modes cost the other paths one more
-- comparison in the on_conflict check.
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
        run_at = CASE WHEN defer_job.on_conflict = 'replace' THEN excluded.run_at ELSE j.run_at END,
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

-- Batch tasks (docs/batches.md): a worker registers each task's batching with the task, so
-- `jobs stats`, the JSON API and the dashboard show which tasks run in batches and how.
-- NULL: a task run job by job (and every task registered by an older worker).
ALTER TABLE tasks
  ADD COLUMN batch_size integer CHECK (batch_size BETWEEN 1 AND 1000),
  ADD COLUMN batch_max_wait_ms integer CHECK (batch_max_wait_ms BETWEEN 0 AND 3600000);
