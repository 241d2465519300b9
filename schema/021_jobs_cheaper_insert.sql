-- Cheaper inserts, measured in server time per single-row insert (loops of 5,000 in a
-- DO block, on a busy two-core machine, so roughly):
--
-- * The statement trigger with a transition table cost ~56 us per insert against ~38 us
--   with this row trigger and its WHEN clause (~31 us with no trigger); PostgreSQL still
--   folds the notifications of one transaction into one per queue.
-- * The queue CHECK used a bounded repetition ({1,100}), which PostgreSQL's regex engine
--   runs ~5x slower than the same rule written with + and length() (~4 us per row).
DROP TRIGGER jobs_notify ON jobs;
DROP FUNCTION notify_jobs();

-- Due jobs wake idle workers that take their queue (see 020 for why only idle ones).
CREATE FUNCTION notify_job() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM workers w WHERE w.idle AND (w.queues IS NULL OR NEW.queue = ANY (w.queues))) THEN
    PERFORM pg_notify(current_schema() || '_jobs', NEW.queue);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify AFTER INSERT ON jobs
  FOR EACH ROW WHEN (NEW.run_at <= now()) EXECUTE FUNCTION notify_job();

ALTER TABLE jobs DROP CONSTRAINT jobs_queue_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_queue_check
  CHECK (length(queue) BETWEEN 1 AND 100 AND queue ~ '^[A-Za-z0-9_.-]+$');
