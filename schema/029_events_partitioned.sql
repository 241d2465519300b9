-- The event log over years: `events` becomes a table partitioned by position range, so
-- that what every processor has long passed can be archived and dropped whole (a DROP
-- TABLE, never a long DELETE), and vacuum and index upkeep touch the recent partitions
-- only. docs/event-log.md is the operator's side of this file.
--
-- An empty `events` (every new install) is converted right here. A non-empty one is left
-- as it is and converted online by `outbatch events partition` (src/events/partitioning.ts):
-- its steps are the functions below, and none of them rewrites or scans the old table
-- under a lock that stops appends or reads.

-- The lifecycle's settings and state, one row.
CREATE TABLE event_log (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  -- Events per partition, for partitions created from now on.
  partition_size bigint NOT NULL DEFAULT 10000000 CHECK (partition_size BETWEEN 100 AND 1000000000000),
  -- Partitions kept ready above the one appends currently fill.
  partitions_ahead integer NOT NULL DEFAULT 2 CHECK (partitions_ahead BETWEEN 1 AND 1000),
  -- The highest (tx_id, position), in the readers' order, of every archived event: a reader
  -- whose checkpoint is below it would miss archived events, and is refused.
  archived_through_tx xid8 NOT NULL DEFAULT '0',
  archived_through_position bigint NOT NULL DEFAULT 0,
  -- Keys of events from this position on are in event_keys; below it, in the unique index
  -- of the table events was before 029 (set by 030, when append_events() began
  -- registering them).
  keys_from bigint NOT NULL DEFAULT 1
);
INSERT INTO event_log DEFAULT VALUES;

-- Idempotency keys, unique across the whole partitioned log, and the index that finds a
-- key's event. PostgreSQL only enforces uniqueness on a partitioned table for keys that
-- include the partition key (position), and a per-partition index would be probed once per
-- partition for every keyed append. append_events() registers each key it stores here, in
-- the same statement (030); a key stored before that (below event_log.keys_from) is found
-- by the old table's own unique index, which stays on it as the partition events_from_1.
-- An archive deletes the keys of the partitions it drops: the idempotency window is the
-- retained log (docs/event-log.md).
CREATE TABLE event_keys (
  idempotency_key text PRIMARY KEY,
  position bigint NOT NULL
);

-- One row per archived partition: where its events went, and how to check the file.
CREATE TABLE event_archives (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  partition text NOT NULL,
  -- [from_position, to_position): the partition's range.
  from_position bigint NOT NULL,
  to_position bigint NOT NULL,
  events bigint NOT NULL,
  -- The highest (tx_id, position) in the partition, in the readers' order.
  through_tx xid8 NOT NULL,
  through_position bigint NOT NULL,
  file text NOT NULL,
  -- SHA-256 of the file's uncompressed NDJSON, as written and as read back.
  sha256 text NOT NULL,
  archived_at timestamptz NOT NULL DEFAULT now()
);

-- Retention: which events may leave the database. No row matching an event = kept forever.
-- An event's policy is the matching row with the longest stream_prefix, a row naming its
-- type before one for any type ('').
CREATE TABLE event_retention (
  stream_prefix text NOT NULL CHECK (length(stream_prefix) <= 200),
  type text NOT NULL CHECK (length(type) <= 200),
  -- NULL: forever.
  keep_days integer CHECK (keep_days BETWEEN 1 AND 365000),
  PRIMARY KEY (stream_prefix, type)
);

-- Creates one empty range partition [from_position, to_position) and attaches it. The
-- partition gets the indexes the parent cannot hold (unique ones without position), and
-- the CHECK that makes the ATTACH skip its scan. ATTACH takes SHARE UPDATE EXCLUSIVE on
-- events (appends and reads go on) and ACCESS EXCLUSIVE on the default partition, which
-- is empty unless partitions fell behind, so it is brief; the caller sets lock_timeout.
-- SECURITY DEFINER: workers create partitions ahead without owning the table.
CREATE FUNCTION create_event_partition(from_position bigint, to_position bigint)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
  name text := 'events_from_' || from_position;
BEGIN
  EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
  EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (position >= %s AND position < %s)',
                 name, name || '_range', from_position, to_position);
  EXECUTE format('CREATE UNIQUE INDEX %I ON %I (stream, stream_version)', name || '_stream_version', name);
  EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                 name, from_position, to_position);
  EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', name, name || '_range');
  RETURN name;
END;
$$;

-- DDL as the owner: not for every role that may connect (a role that reads events could
-- otherwise attach far-future partitions, or hold events_overflow locked). roles.sql grants
-- both functions to the worker role.
REVOKE EXECUTE ON FUNCTION create_event_partition(bigint, bigint) FROM PUBLIC;

-- Keeps partitions_ahead partitions ready above the position appends have reached; returns
-- the partitions it created (usually none). Cheap when nothing is due: it reads the
-- sequence and the highest bound. Workers call it on every maintenance pass, with a short
-- lock_timeout, in a transaction of its own. Rows that landed in events_overflow (the default
-- partition) because partitions fell behind stay there; new partitions start above them.
CREATE FUNCTION create_event_partitions_ahead()
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
  settings event_log%ROWTYPE;
  reached bigint;
  top bigint;
  margin bigint;
BEGIN
  -- One creator at a time: a worker that finds another at it has nothing to do.
  IF (SELECT c.relkind FROM pg_class c WHERE c.oid = 'events'::regclass) <> 'p'
     OR NOT pg_try_advisory_xact_lock(hashtext(current_schema() || '.create_event_partitions_ahead')) THEN
    RETURN;
  END IF;
  SELECT * INTO settings FROM event_log;
  SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO reached FROM events_position_seq;
  -- The end of the partitions that cover the positions from reached on without a gap: a
  -- partition far above them (an import's) does not make the ones between ready.
  SELECT min(b.upper) INTO top FROM event_partition_bounds b
  WHERE b.upper > reached
    AND NOT EXISTS (SELECT 1 FROM event_partition_bounds n WHERE n.lower = b.upper)
    AND EXISTS (SELECT 1 FROM event_partition_bounds c WHERE c.lower <= reached + 1 AND c.upper > reached + 1);
  -- Appends outran the partitions (no worker ran for a while), or are about to: positions
  -- from top up go to events_overflow, and an append already routed there fails (a
  -- partition constraint violation) if the partition attached meanwhile covers its row.
  -- So the next partition starts clear of every position an append in flight may hold:
  -- `margin` above the sequence, 100 000 (COPY batches are 10 000s), or half the room kept
  -- ahead for small partitions; the positions below it go to events_overflow, and stay.
  margin := least(100000, settings.partition_size * settings.partitions_ahead / 2);
  IF top IS NULL OR top < reached + margin THEN
    top := greatest(coalesce(top, 1), reached + margin, (SELECT coalesce(max(o.position), 0) + 1 FROM events_overflow o));
  END IF;
  WHILE top <= reached + settings.partitions_ahead * settings.partition_size LOOP
    RETURN NEXT create_event_partition(top, top + settings.partition_size);
    top := top + settings.partition_size;
  END LOOP;
END;
$$;
REVOKE EXECUTE ON FUNCTION create_event_partitions_ahead() FROM PUBLIC;

-- The range partitions of events with their bounds, in position order (the default
-- partition, events_overflow, has none and is not listed).
CREATE VIEW event_partition_bounds AS
SELECT c.relname::text AS name,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''?(-?\d+)''?\)'))[1]::bigint AS lower,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''?(-?\d+)''?\)'))[1]::bigint AS upper
FROM pg_class parent
JOIN pg_inherits i ON i.inhparent = parent.oid
JOIN pg_class c ON c.oid = i.inhrelid
-- By name in this schema, not 'events'::regclass: a view stores that as the table's oid,
-- which the conversion gives to the old table.
WHERE parent.relname = 'events'
  AND parent.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'event_log'::regclass)
  AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT';

-- Online conversion, step 1 of 3: a CHECK on the old table that proves every row is below
-- `bound`, added NOT VALID (instant; new rows are checked). Step 2 validates it, step 3
-- swaps. `bound` must leave room for the appends that come
-- before step 3 (the command picks the next multiple of partition_size at least one
-- partition above the sequence); if they reach it, appends fail the CHECK, so step 3
-- checks the room left and the command starts again with a higher bound.
CREATE FUNCTION prepare_events_partitioning(bound bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
  IF (SELECT c.relkind FROM pg_class c WHERE c.oid = 'events'::regclass) = 'p' THEN
    RAISE EXCEPTION 'events is already partitioned' USING ERRCODE = '55000';
  END IF;
  ALTER TABLE events DROP CONSTRAINT IF EXISTS events_partition_bound;
  EXECUTE format('ALTER TABLE events ADD CONSTRAINT events_partition_bound CHECK (position >= 1 AND position < %s) NOT VALID', bound);
END;
$$;

-- Step 2: validates events_partition_bound and any other CHECK added NOT VALID (ATTACH
-- refuses a partition whose constraint is not valid where the parent's is). Each VALIDATE
-- scans the table under SHARE UPDATE EXCLUSIVE, which appends and reads do not wait for;
-- the caller turns statement_timeout off for it.
CREATE FUNCTION validate_events_for_partitioning()
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
  pending text;
BEGIN
  FOR pending IN
    SELECT conname FROM pg_constraint WHERE conrelid = 'events'::regclass AND contype = 'c' AND NOT convalidated
  LOOP
    EXECUTE format('ALTER TABLE events VALIDATE CONSTRAINT %I', pending);
  END LOOP;
END;
$$;

-- Step 3: one short transaction that renames the old table to events_from_1, creates the
-- partitioned events over the same columns, defaults and checks, and attaches the old
-- table as its first partition [1, bound). Catalog work only: the validated CHECK makes
-- the ATTACH skip its scan, and the parent's indexes are the old table's (PostgreSQL
-- attaches matching indexes instead of building them). It takes ACCESS EXCLUSIVE on the
-- old table for those milliseconds; the caller sets lock_timeout and retries. The identity
-- becomes a sequence of the same name (PostgreSQL before 17 has no identity columns on
-- partitioned tables), continuing where the identity stopped. Grants on the table and the
-- sequence are carried over. The old table keeps its own unique indexes on
-- idempotency_key and (stream, stream_version), which answer for its rows.
CREATE FUNCTION swap_events_to_partitioned(bound bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
  old_sequence regclass;
  reached bigint;
  called boolean;
  grant_row record;
  sequence_privileges text[];
  sequence_grantees oid[];
  size bigint := (SELECT partition_size FROM event_log);
BEGIN
  IF (SELECT c.relkind FROM pg_class c WHERE c.oid = 'events'::regclass) = 'p' THEN
    RAISE EXCEPTION 'events is already partitioned' USING ERRCODE = '55000';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_constraint
                 WHERE conrelid = 'events'::regclass AND conname = 'events_partition_bound' AND convalidated
                   AND pg_get_constraintdef(oid) = format('CHECK ((("position" >= 1) AND ("position" < %s)))', bound)) THEN
    RAISE EXCEPTION 'events has no validated events_partition_bound CHECK below %: run prepare_events_partitioning(%) and validate_events_for_partitioning() first', bound, bound
      USING ERRCODE = '55000';
  END IF;
  IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'events'::regclass AND contype = 'c' AND NOT convalidated) THEN
    RAISE EXCEPTION 'events has a CHECK constraint that is not validated: run validate_events_for_partitioning() first'
      USING ERRCODE = '55000';
  END IF;
  LOCK TABLE events IN ACCESS EXCLUSIVE MODE;
  old_sequence := pg_get_serial_sequence('events', 'position')::regclass;
  EXECUTE format('SELECT last_value, is_called FROM %s', old_sequence) INTO reached, called;
  -- Less than a tenth of a partition of room left: start again with a higher bound.
  IF bound - reached < greatest(size / 10, 100) THEN
    RAISE EXCEPTION 'events reached position % while the bound % was validated: run the conversion again', reached, bound
      USING ERRCODE = '55000';
  END IF;

  -- Dropping the identity drops its sequence: its grants are read first.
  SELECT array_agg(a.privilege_type), array_agg(a.grantee) INTO sequence_privileges, sequence_grantees
  FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = old_sequence AND a.grantee <> c.relowner;
  ALTER TABLE events ALTER COLUMN position DROP IDENTITY;
  ALTER TABLE events RENAME TO events_from_1;
  ALTER INDEX events_pkey RENAME TO events_from_1_pkey;
  ALTER INDEX events_tx_id_position RENAME TO events_from_1_tx_id_position_idx;
  ALTER INDEX events_type RENAME TO events_from_1_type_tx_id_position_idx;
  ALTER INDEX events_idempotency_key_key RENAME TO events_from_1_idempotency_key;
  ALTER INDEX events_stream_version RENAME TO events_from_1_stream_version;

  CREATE SEQUENCE events_position_seq;
  PERFORM setval('events_position_seq', reached, called);
  CREATE TABLE events (LIKE events_from_1 INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (position);
  ALTER TABLE events DROP CONSTRAINT events_partition_bound;
  ALTER TABLE events ALTER COLUMN position SET DEFAULT nextval('events_position_seq');
  ALTER SEQUENCE events_position_seq OWNED BY events.position;
  ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (position);
  -- The readers' order, and the checkpoint's key; the type filter's walk.
  CREATE INDEX events_tx_id_position ON events (tx_id, position);
  CREATE INDEX events_type ON events (type, tx_id, position);
  CREATE TABLE events_overflow PARTITION OF events DEFAULT;
  CREATE UNIQUE INDEX events_overflow_stream_version ON events_overflow (stream, stream_version);
  EXECUTE format('ALTER TABLE events ATTACH PARTITION events_from_1 FOR VALUES FROM (1) TO (%s)', bound);
  ALTER TABLE events_from_1 DROP CONSTRAINT events_partition_bound;

  FOR grant_row IN
    SELECT a.privilege_type, a.grantee FROM pg_class c, aclexplode(c.relacl) a
    WHERE c.oid = 'events_from_1'::regclass AND a.grantee <> c.relowner
  LOOP
    EXECUTE format('GRANT %s ON events TO %s', grant_row.privilege_type,
                   CASE WHEN grant_row.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(grant_row.grantee)) END);
  END LOOP;
  FOR grant_row IN SELECT * FROM unnest(sequence_privileges, sequence_grantees) AS g(privilege_type, grantee) LOOP
    EXECUTE format('GRANT %s ON SEQUENCE events_position_seq TO %s', grant_row.privilege_type,
                   CASE WHEN grant_row.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(grant_row.grantee)) END);
  END LOOP;
END;
$$;

-- An empty log (every new install, and most upgrades of a test schema) converts now.
DO $$
DECLARE
  bound bigint;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM events) THEN
    -- The bound above the sequence (an emptied table may have drawn positions before).
    bound := (SELECT ((last_value + greatest(l.partition_size / 10, 100)) / l.partition_size + 1) * l.partition_size
              FROM events_position_seq, event_log l);
    PERFORM prepare_events_partitioning(bound);
    PERFORM validate_events_for_partitioning();
    PERFORM swap_events_to_partitioned(bound);
    -- No key was stored before event_keys: the old table's key index has nothing to answer.
    ALTER TABLE events_from_1 DROP CONSTRAINT events_from_1_idempotency_key;
    PERFORM create_event_partitions_ahead();
  END IF;
END;
$$;

-- The archived horizon is a transaction id compared with the events' ones: a rebase after
-- a logical restore must move it with them (025's reasons), so it joins the view.
CREATE OR REPLACE VIEW stored_tx_ids AS
SELECT tx_id FROM events
UNION ALL
SELECT checkpoint_tx FROM processors WHERE checkpoint_tx <> '0'::xid8
UNION ALL
SELECT tx_id FROM processor_dead_letters
UNION ALL
SELECT archived_through_tx FROM event_log WHERE archived_through_tx <> '0'::xid8
UNION ALL
SELECT through_tx FROM event_archives;

-- 028's body, plus the two archive columns.
CREATE OR REPLACE FUNCTION rebase_tx_ids()
RETURNS TABLE (
  distinct_ids bigint,
  events_updated bigint,
  checkpoints_updated bigint,
  dead_letters_updated bigint,
  highest_new xid8
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
  mine xid8 := pg_current_xact_id();
BEGIN
  -- Appenders and processor pages wait until commit; readers (status, dashboard) go on.
  -- Workers should be stopped; a page that runs anyway either waits (its checkpoint save
  -- then finds the row moved and rolls the page back) or meets a deadlock that PostgreSQL
  -- resolves by rolling one side back whole: never a half-rebased schema.
  LOCK TABLE events, processor_dead_letters, processors, event_log, event_archives IN SHARE ROW EXCLUSIVE MODE;
  CREATE TEMP TABLE tx_id_map ON COMMIT DROP AS
  SELECT old, (2 + dense_rank() OVER (ORDER BY old))::text::xid8 AS new
  FROM (SELECT DISTINCT tx_id AS old FROM stored_tx_ids WHERE tx_id <> '0'::xid8) ids;
  SELECT count(*) INTO distinct_ids FROM tx_id_map;
  highest_new := coalesce((SELECT m.new FROM tx_id_map m ORDER BY m.new DESC LIMIT 1), '0'::xid8);
  IF highest_new >= mine THEN
    RAISE EXCEPTION 'rebase_tx_ids: % distinct tx ids need the server past %, but it is at %: call consume_tx_ids(%) first',
      distinct_ids, highest_new, mine, (highest_new::text::bigint - mine::text::bigint + 1)
      USING ERRCODE = '55000';
  END IF;
  -- Each UPDATE joins on the values its own snapshot sees, so an id moved to a new value
  -- that is also an old one is not moved twice.
  UPDATE events e SET tx_id = m.new FROM tx_id_map m WHERE e.tx_id = m.old;
  GET DIAGNOSTICS events_updated = ROW_COUNT;
  UPDATE processors p SET checkpoint_tx = m.new FROM tx_id_map m WHERE p.checkpoint_tx = m.old;
  GET DIAGNOSTICS checkpoints_updated = ROW_COUNT;
  UPDATE processor_dead_letters d SET tx_id = m.new FROM tx_id_map m WHERE d.tx_id = m.old;
  GET DIAGNOSTICS dead_letters_updated = ROW_COUNT;
  UPDATE event_log l SET archived_through_tx = m.new FROM tx_id_map m WHERE l.archived_through_tx = m.old;
  UPDATE event_archives a SET through_tx = m.new FROM tx_id_map m WHERE a.through_tx = m.old;
  RETURN NEXT;
END;
$$;
