-- Job lifecycle: cancelling a running job, progress, results, and waiting for a job's
-- outcome (deferAndWait). docs/lifecycle.md.
--
-- Cancelling a running job needs no column: the operator's statement (src/jobs/operate.ts)
-- turns the `doing` row into `cancelled` at once, so every later outcome of that run, which
-- only ever touches rows still `doing` for its worker and claim, changes nothing. It then
-- NOTIFYs "<schema>_cancel" so the running worker aborts ctx.signal; workers also read their
-- running jobs' status with each heartbeat (no LISTEN behind a pooler).
--
-- All new columns are nullable or have a constant default: adding them rewrites nothing
-- (PostgreSQL 11+ stores a constant default in the catalog), so the migration is instant on
-- a large jobs table.

-- A caller waits for this job's outcome (deferAndWait). Its success keeps the row (as
-- `succeeded`, with its result) even when the task does not keep succeeded jobs, and its
-- final status NOTIFYs the waiter (trigger below).
ALTER TABLE jobs ADD COLUMN awaited boolean NOT NULL DEFAULT false;
-- The handler's return value (JSON), stored when the row is kept after success.
ALTER TABLE jobs ADD COLUMN result jsonb;
-- ctx.progress(value, message): a percentage, throttled by the worker (src/worker/progress.ts).
ALTER TABLE jobs ADD COLUMN progress real CHECK (progress >= 0 AND progress <= 100);
ALTER TABLE jobs ADD COLUMN progress_message text;
ALTER TABLE jobs ADD COLUMN progress_at timestamptz;

-- A waiter (deferAndWait) learns that its job reached a final state: NOTIFY on channel
-- "<schema>_done", payload the job id. Only awaited rows: a NOTIFYing transaction takes a
-- cluster-wide lock through its commit (see notify_job, 020), which the completion batches
-- of jobs nobody waits for must not pay. The WHEN clause is checked per updated row without
-- calling the function. Measured: one UPDATE of 10,000 `doing` rows nobody awaits to
-- `succeeded` (completeJobs' kept rows), minimum of 14 runs on a shared 2-core host: 158 ms
-- with the trigger, 162 ms with it disabled; the difference is below the host's noise.
CREATE FUNCTION notify_job_done() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  PERFORM pg_notify(current_schema() || '_done', OLD.id::text);
  RETURN NULL;
END
$$;

CREATE TRIGGER jobs_done_notify AFTER UPDATE OF status ON jobs
  FOR EACH ROW WHEN (OLD.awaited AND OLD.status <> NEW.status AND NEW.status IN ('succeeded', 'failed', 'cancelled'))
  EXECUTE FUNCTION notify_job_done();

-- An awaited row deleted by an operator: the waiter is told, and reports the job gone.
CREATE TRIGGER jobs_done_notify_delete AFTER DELETE ON jobs
  FOR EACH ROW WHEN (OLD.awaited) EXECUTE FUNCTION notify_job_done();

-- The view lists j.* as the columns jobs had when it was created: re-created to show the
-- new ones (a column cannot be inserted before `state` by CREATE OR REPLACE).
DROP VIEW job_states;
CREATE VIEW job_states AS
SELECT j.*,
  CASE
    WHEN j.status = 'todo' AND j.run_at > now() THEN 'scheduled'
    WHEN j.status = 'doing' AND NOT EXISTS (
      SELECT 1 FROM workers w
      WHERE w.id = j.worker_id AND worker_is_live(w.last_seen_at, w.stall_timeout_ms, now()))
      THEN 'dirty'
    ELSE j.status
  END AS state
FROM jobs j;
