-- NOTIFY only when a worker is waiting for it.
--
-- A transaction that NOTIFYs takes a cluster-wide lock in its pre-commit and holds it
-- through the commit's WAL flush, so every deferring transaction committed one after
-- another: with 10 concurrent callers, defers ran at 2,700/s against 7,000/s without the
-- trigger (ops/bench/RESULTS.md). A worker whose last claim came back full is busy and
-- claims again on its own; only idle workers need waking. Workers publish that here,
-- and the trigger skips the NOTIFY when no idle worker takes the queue.
--
-- Trade-off: a transaction that checked while every worker was busy, and commits after
-- one went idle (and claimed), is found by that worker's next poll (pollInterval, 1 s by
-- default) instead of at once. Nothing is lost.
ALTER TABLE workers ADD COLUMN idle boolean NOT NULL DEFAULT true;

CREATE OR REPLACE FUNCTION notify_jobs() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  PERFORM pg_notify(current_schema() || '_jobs', s.queue)
  FROM (SELECT DISTINCT n.queue FROM new_jobs n WHERE n.run_at <= now()) s
  WHERE EXISTS (
    SELECT 1 FROM workers w WHERE w.idle AND (w.queues IS NULL OR s.queue = ANY (w.queues)));
  RETURN NULL;
END
$$;
