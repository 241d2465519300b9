-- Where a job came from (docs/tracing.md): the job whose handler deferred it, or the
-- processor page (its first and last event positions), or the schedule tick, and the W3C
-- trace context (traceparent, tracestate) it continues. The same JSON shape as an event's
-- metadata.$origin. NULL for a job deferred with no cause and no trace context: most jobs.
--
-- defer_job() and defer_jobs() are not replaced: a job with an origin goes through the
-- wrappers below, which hand it to the INSERT inside them through a transaction-local
-- setting the column's default reads. So the insert writes the row once, with its origin
-- (an UPDATE after the insert would write every traced job twice), and defer_job's rules
-- stay in one place. Without the setting the default is NULL: current_setting() with
-- missing_ok is a lookup in the session's settings, nothing measurable beside an insert:
-- 8 rounds of 3,000 defer_job() calls on a shared 2-core host, the default set and
-- dropped in turn, gave 177-409 us per call with it and 217-446 us without (the spread is
-- the host's); defer_job_with_origin() gave 342-578 us. A stable default: ADD COLUMN
-- stores NULL for the existing rows without rewriting the table.
ALTER TABLE jobs ADD COLUMN origin jsonb
  DEFAULT (nullif(current_setting('outbatch.job_origin', true), ''))::jsonb;

-- The origin check the two wrappers below share: a JSON object (or NULL), its traceparent, if
-- any, W3C version-traceid-parentid-flags in lowercase hex, not all-zero ids.
CREATE FUNCTION check_job_origin(origin jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF origin IS NULL THEN
    RETURN;
  END IF;
  IF jsonb_typeof(origin) <> 'object' THEN
    RAISE EXCEPTION 'job origin % is invalid: expected a JSON object', origin
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF origin ? 'traceparent' AND NOT coalesce(
       (origin ->> 'traceparent') ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$'
       AND left(origin ->> 'traceparent', 2) <> 'ff'
       AND substr(origin ->> 'traceparent', 4, 32) <> repeat('0', 32)
       AND substr(origin ->> 'traceparent', 37, 16) <> repeat('0', 16)
       AND (left(origin ->> 'traceparent', 2) <> '00' OR length(origin ->> 'traceparent') = 55), false) THEN
    RAISE EXCEPTION 'job origin traceparent % is invalid: expected a W3C traceparent such as 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      origin ->> 'traceparent' USING ERRCODE = 'invalid_parameter_value';
  END IF;
END
$$;

-- defer_job() with an origin. The setting is emptied again once the insert is done, so a
-- later insert in the same transaction never inherits it; if defer_job() raises
-- (AlreadyEnqueued), the statement's transaction or savepoint rolls back and takes the
-- setting with it. (Not a SET clause on the function, which would restore it by itself: a
-- placeholder setting there needs a superuser to create the function, and managed servers
-- have none.) An origin that is not an object, or whose traceparent is no W3C traceparent,
-- is refused (22023) like the TypeScript API refuses it.
CREATE FUNCTION defer_job_with_origin(
  origin jsonb,
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
BEGIN
  PERFORM check_job_origin(defer_job_with_origin.origin);
  PERFORM set_config('outbatch.job_origin', coalesce(defer_job_with_origin.origin::text, ''), true);
  RETURN QUERY SELECT d.id, d.enqueued FROM defer_job(
    defer_job_with_origin.task, defer_job_with_origin.args, defer_job_with_origin.queue,
    defer_job_with_origin.run_at, defer_job_with_origin.priority, defer_job_with_origin.lock,
    defer_job_with_origin.queueing_lock, defer_job_with_origin.max_attempts,
    defer_job_with_origin.on_conflict, defer_job_with_origin.group_key) d;
  PERFORM set_config('outbatch.job_origin', '', true);
END
$$;

-- defer_jobs() with one origin for the whole batch (one call is one cause).
CREATE FUNCTION defer_jobs_with_origin(
  origin jsonb,
  tasks text[],
  args jsonb[],
  queues text[],
  run_ats timestamptz[],
  priorities integer[],
  locks text[],
  queueing_locks text[],
  max_attempts integer[],
  on_conflicts text[],
  group_keys text[] DEFAULT NULL
) RETURNS TABLE (id bigint, enqueued boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  PERFORM check_job_origin(defer_jobs_with_origin.origin);
  PERFORM set_config('outbatch.job_origin', coalesce(defer_jobs_with_origin.origin::text, ''), true);
  RETURN QUERY SELECT d.id, d.enqueued FROM defer_jobs(
    defer_jobs_with_origin.tasks, defer_jobs_with_origin.args, defer_jobs_with_origin.queues,
    defer_jobs_with_origin.run_ats, defer_jobs_with_origin.priorities, defer_jobs_with_origin.locks,
    defer_jobs_with_origin.queueing_locks, defer_jobs_with_origin.max_attempts,
    defer_jobs_with_origin.on_conflicts, defer_jobs_with_origin.group_keys) d;
  PERFORM set_config('outbatch.job_origin', '', true);
END
$$;
