-- Retention for the history tables (src/jobs/maintenance.ts, pruneHistory): each
-- maintenance pass deletes at most one batch of rows older than the retention, found
-- through these indexes. Without them each pass would scan the whole table to find that
-- nothing is old enough, every few seconds, forever.
--
-- Measured on 400k task_stats, 500k schedule_ticks and 20k audit_log rows: a full batch
-- of 10 000 deletes in 5-16 ms; a pass with nothing old enough is one index probe (0.1 ms).
--
-- schedule_ticks needs none: its primary key (schedule, tick) serves the per-schedule
-- range the prune walks.
--
-- task_stats can be large on an old install (a row per task and minute). This build
-- holds a SHARE lock, so job completions, which count into task_stats, wait for it:
-- measured 2.1 s per million rows on a 2-core test box. The index also serves the
-- dashboard's per-minute throughput (a join on minute that scanned the table).
CREATE INDEX task_stats_minute ON task_stats (minute);

-- Operator actions: a small table; the index keeps each pass to the rows it deletes.
CREATE INDEX audit_log_at ON audit_log (at);
