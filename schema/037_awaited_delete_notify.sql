-- An awaited job's row deleted after it ended sends no NOTIFY (docs/lifecycle.md).
--
-- 033's jobs_done_notify_delete NOTIFYd "<schema>_done" for every awaited row deleted,
-- whatever its status. Most such deletes are the workers' purge of kept rows
-- (purgeSucceeded): an awaited job's row is kept an hour after success for its waiter,
-- then purged — one NOTIFY per purged row, for a waiter told long before, when the job
-- ended (jobs_done_notify), and a purge transaction that took the cluster-wide notify lock
-- through its commit (see notify_job, 020). Found by review: a purge of 200 awaited rows
-- sent 200 notifications. A row deleted before it ended (an operator's delete of a
-- waiting job) still tells its waiter, which reports the job gone.
DROP TRIGGER jobs_done_notify_delete ON jobs;
CREATE TRIGGER jobs_done_notify_delete AFTER DELETE ON jobs
  FOR EACH ROW WHEN (OLD.awaited AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled'))
  EXECUTE FUNCTION notify_job_done();
