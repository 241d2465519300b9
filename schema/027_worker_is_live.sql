-- One definition of "this worker is alive": it heartbeated within its own stall timeout, as
-- of `at` (now(), or the time a recovery or maintenance pass is given). The job_states view
-- and every statement in src/ that asks the question (recovery, pruning workers, the
-- dashboard, `jobs stats`, jobs no live worker knows, the replay command) call it, instead
-- of seven copies of the condition that could drift apart.
--
-- Written so the planner inlines it: one SELECT of one expression, LANGUAGE sql, no SET
-- clause, not SECURITY DEFINER, not STRICT, and no more volatile than declared. Inlined, the
-- call becomes the bare comparison inside the calling statement, planned and estimated like
-- the hand-written condition it replaces (EXPLAIN VERBOSE shows the comparison, not the
-- call); a call that is not inlined is an opaque function call per row.
--
-- Hence the body subtracts two timestamps (timestamptz - timestamptz, immutable) rather than
-- an interval from a timestamp as the copies did (timestamptz - interval is only stable: a
-- day's length depends on the time zone), so that it can be declared IMMUTABLE truthfully;
-- a body more volatile than its declaration is not inlined. The two forms agree to the
-- microsecond, as the interval is whole milliseconds with no day or month part.
CREATE FUNCTION worker_is_live(last_seen_at timestamptz, stall_timeout_ms integer, at timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT at - last_seen_at < stall_timeout_ms * interval '1 millisecond'
$$;

-- Same columns, the liveness now asked of worker_is_live.
CREATE OR REPLACE VIEW job_states AS
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
