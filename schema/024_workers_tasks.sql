-- Which tasks each worker can run. A worker claims only jobs of the tasks it registered
-- (a rolling deploy's old worker must not take a new task's job and dead-letter it as
-- unknown), and operators see the jobs that no live worker knows (`jobs stats`, the
-- dashboard, metric outbatch_jobs_without_worker). NULL: registered by an older build,
-- which claimed every task; read as "knows every task".
ALTER TABLE workers ADD COLUMN tasks text[];
