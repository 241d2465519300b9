-- Archiving whole partitions (`outbatch events archive`, src/events/archive.ts): the one
-- step that needs dynamic DDL, and a column an archive needs to refuse a replay by time.

-- The newest recorded_at in the partition: a replay or re-drive `--from <time>` before it
-- would start inside the archive (the rows are gone, so the time cannot be looked up).
ALTER TABLE event_archives ADD COLUMN last_recorded_at timestamptz;

-- Detaches and drops range partitions of events, after checking each still holds exactly
-- the events the archive file holds. The archive wrote and verified the file outside any
-- lock; a transaction that was still inserting into a partition then (its position drawn
-- below the upper bound, its rows not yet committed, so invisible to the archive's count)
-- would have its rows dropped unseen. So, first, SHARE on every partition: it waits for
-- each such transaction to end and lets no new insert in, while reads (ACCESS SHARE) go
-- on; then the count, after the wait. A mismatch raises, and the caller's transaction
-- (which also records the archive and moves the horizon) rolls back whole: nothing is
-- dropped, and the archive is run again. All partitions are counted before the first
-- DETACH: the counts (whole scans) must not run under the ACCESS EXCLUSIVE lock on events
-- that DETACH takes, which stops every append and read. DETACH and DROP are catalog work
-- only, but that lock queues behind every open reader of events (a processor's page) and
-- new appends and reads queue behind it: the caller sets a short lock_timeout and retries.
-- events_overflow, the default partition, is no range partition: it is refused.
-- Not SECURITY DEFINER: only the table's owner (the migrating role) archives.
CREATE FUNCTION drop_event_partitions(partition_names text[], expected_events bigint[])
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
  found bigint;
  i integer;
BEGIN
  FOR i IN 1 .. coalesce(array_length(partition_names, 1), 0) LOOP
    IF NOT EXISTS (SELECT 1 FROM event_partition_bounds b WHERE b.name = partition_names[i]) THEN
      RAISE EXCEPTION 'events has no range partition "%"', partition_names[i] USING ERRCODE = '55000';
    END IF;
    EXECUTE format('LOCK TABLE %I IN SHARE MODE', partition_names[i]);
    EXECUTE format('SELECT count(*) FROM %I', partition_names[i]) INTO found;
    IF found <> expected_events[i] THEN
      RAISE EXCEPTION 'partition % holds % events, the archive file %: it changed since it was written; run the archive again',
        partition_names[i], found, expected_events[i] USING ERRCODE = '55000';
    END IF;
  END LOOP;
  FOR i IN 1 .. coalesce(array_length(partition_names, 1), 0) LOOP
    EXECUTE format('ALTER TABLE events DETACH PARTITION %I', partition_names[i]);
    EXECUTE format('DROP TABLE %I', partition_names[i]);
  END LOOP;
END;
$$;
