-- The whole outbatch schema as it is today: what the numbered migrations (schema/NNN_name.sql)
-- leave behind after the one named on the next line, which migrate.ts reads.
-- Matches migration: 039_abandoned_runs
-- Read this file to see what the database is; read the migrations to see how it got there
-- and what was measured on the way. schema/README.md lists, per migration, which of its
-- definitions later files replaced.
--
-- A fresh install runs this file in one transaction and records every migration as
-- applied (src/db/migrate.ts); an install that already has a migrations table applies the
-- migrations it lacks, one file at a time. Both roads must end in the same schema, and
-- test/db/schemaSnapshot.test.ts proves it: it builds one schema each way and
-- compares their catalogs (columns and defaults, constraints, indexes, functions with
-- their bodies, triggers, views, sequences, grants, comments).
--
-- RULE: a new migration updates this file in the same commit, "Matches migration" line
-- included. Until it does, the snapshot test fails and names what differs (and a fresh
-- install applies the files newer than that line on top). Function bodies are compared as
-- text, so a body here is a verbatim copy of the one in its migration; explanations go
-- above a definition, never inside its body.
--
-- Like the migrations, this file names no schema: migrate.ts runs it with search_path set
-- to the target schema, and the functions capture that (SET search_path FROM CURRENT).
-- It grants nothing: roles are ops/sql/roles.sql's business. The migrations table is
-- migrate.ts's bookkeeping and is created there, for both roads.
--
-- Grouped by concern. Workers and tasks come before jobs because defer_job() declares a
-- tasks%ROWTYPE and job_states reads workers; rebasing comes last because its view reads
-- events and processors. [NNN] names the migration(s) a definition comes from.

-- ===========================================================================================
-- Events: the outbox
-- ===========================================================================================

-- The event outbox. Services append in their own transaction; readers walk the log in
-- (tx_id, position) order and only below the oldest running transaction, so an event
-- that commits late is never skipped (see "gap-safe" in the README). [002]
CREATE TABLE events (
  position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tx_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
  stream text NOT NULL CHECK (length(stream) BETWEEN 1 AND 200),
  stream_version bigint NOT NULL CHECK (stream_version >= 1),
  type text NOT NULL CHECK (length(type) BETWEEN 1 AND 200),
  data jsonb NOT NULL,
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
  recorded_at timestamptz NOT NULL DEFAULT now(),
  idempotency_key text UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 200),
  -- The version of its type's shape the appending code wrote (docs/upcasting.md); readers
  -- upcast older versions on read, the row stays as written. Events from before 030 are 1. [030]
  type_version integer NOT NULL DEFAULT 1
);
-- type_version's CHECK is added after the conversion to partitions, below. [030]

-- The readers' order, and the checkpoint's key. [002]
CREATE INDEX events_tx_id_position ON events (tx_id, position);
-- One version per stream: the last line of defence behind the streams row lock. [002]
CREATE UNIQUE INDEX events_stream_version ON events (stream, stream_version);
-- Processors that filter by type walk this index in the readers' order. [002]
CREATE INDEX events_type ON events (type, tx_id, position);

-- The current version of every stream. Appenders bump it with one upsert, whose row lock
-- serialises appenders to the same stream until commit, so versions stay contiguous
-- without retries; a rolled back append rolls the bump back with it. [002]
CREATE TABLE streams (
  stream text PRIMARY KEY,
  version bigint NOT NULL CHECK (version >= 0)
);

-- append_events(events, expected_versions): the outbox for any language and for triggers.
--   events: a JSON array of {"stream", "type", "data", "metadata"?, "idempotency_key"?,
--           "type_version"?}
--   expected_versions: optional JSON object {"<stream>": <version> | "no_stream" | "any"}
-- Returns one row per input element, in input order: the stored event, with
-- duplicate = true when an event with that idempotency key was already stored (by an
-- earlier call or earlier in this array). A stream that moved raises SQLSTATE OB409 with
-- DETAIL {"stream", "expected", "actual"}. One NOTIFY <schema>_events per transaction.
-- Run it in READ COMMITTED (the default): two transactions appending the same new
-- idempotency key at the same moment make the later one fail with a unique violation on
-- events_idempotency_key_key, and a retry returns the stored event. [002]
--
-- Measured (ops/bench/RESULTS.md): a single event, the common case from services, takes a
-- path of three plain statements; any other array goes to append_events_batch below. [011]
--
-- Each element may carry "type_version" (a whole number >= 1, default 1), stored in
-- events.type_version and returned before "duplicate". [030]
CREATE FUNCTION append_events(events jsonb, expected_versions jsonb DEFAULT NULL)
RETURNS TABLE (
  "position" bigint,
  tx_id xid8,
  stream text,
  stream_version bigint,
  type text,
  data jsonb,
  metadata jsonb,
  recorded_at timestamptz,
  idempotency_key text,
  type_version integer,
  duplicate boolean
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
  keys_below bigint := (SELECT l.keys_from FROM event_log l);
  e jsonb;
  want jsonb;
  expected bigint;
  version_after bigint;
  other text;
BEGIN
  IF events IS NULL OR jsonb_typeof(events) <> 'array' THEN
    RAISE EXCEPTION 'append_events: events must be a JSON array of {"stream", "type", "data"} objects'
      USING ERRCODE = '22023';
  END IF;
  IF expected_versions IS NOT NULL AND jsonb_typeof(expected_versions) <> 'object' THEN
    RAISE EXCEPTION 'append_events: expected_versions must be a JSON object {"<stream>": <version> | "no_stream" | "any"}'
      USING ERRCODE = '22023';
  END IF;
  IF jsonb_array_length(events) <> 1 THEN
    RETURN QUERY SELECT * FROM append_events_batch(events, expected_versions);
    RETURN;
  END IF;

  -- One event: the common case from services, in as few statements as it takes.
  e := events->0;
  IF e->>'idempotency_key' IS NOT NULL THEN
    RETURN QUERY
    SELECT s."position", s.tx_id, s.stream, s.stream_version, s.type, s.data, s.metadata,
           s.recorded_at, s.idempotency_key, s.type_version, true
    FROM events s
    WHERE s."position" = (SELECT k."position" FROM event_keys k WHERE k.idempotency_key = e->>'idempotency_key');
    IF FOUND THEN
      RETURN;
    END IF;
    RETURN QUERY
    SELECT s."position", s.tx_id, s.stream, s.stream_version, s.type, s.data, s.metadata,
           s.recorded_at, s.idempotency_key, s.type_version, true
    FROM events s WHERE s.idempotency_key = e->>'idempotency_key' AND s."position" < keys_below;
    IF FOUND THEN
      RETURN;
    END IF;
  END IF;
  IF expected_versions IS NOT NULL AND expected_versions <> '{}'::jsonb THEN
    FOR other IN SELECT k FROM jsonb_object_keys(expected_versions) AS k WHERE k IS DISTINCT FROM e->>'stream' LOOP
      RAISE EXCEPTION 'append_events: expected_versions names stream "%" but no event is for it', other
        USING ERRCODE = '22023';
    END LOOP;
    want := expected_versions->(e->>'stream');
    IF want = '"any"'::jsonb THEN
      expected := NULL;
    ELSIF want = '"no_stream"'::jsonb THEN
      expected := 0;
    ELSIF jsonb_typeof(want) = 'number' AND want::numeric >= 0 AND want::numeric = trunc(want::numeric) THEN
      expected := want::bigint;
    ELSE
      RAISE EXCEPTION 'append_events: expected version % for stream "%" is invalid: use a version >= 0, "no_stream" or "any"',
        want, e->>'stream' USING ERRCODE = '22023';
    END IF;
  END IF;
  INSERT INTO streams AS s (stream, version) VALUES (e->>'stream', 1)
  ON CONFLICT ON CONSTRAINT streams_pkey DO UPDATE SET version = s.version + 1
  RETURNING s.version INTO version_after;
  IF expected IS NOT NULL AND version_after - 1 <> expected THEN
    RAISE EXCEPTION 'stream "%" is at version %, expected %', e->>'stream', version_after - 1,
      CASE WHEN want = '"no_stream"'::jsonb THEN 'no stream' ELSE want::text END
      USING ERRCODE = 'OB409',
            DETAIL = jsonb_build_object('stream', e->>'stream', 'expected', want,
                                        'actual', version_after - 1)::text;
  END IF;
  RETURN QUERY
  WITH inserted AS (
    INSERT INTO events AS n (stream, stream_version, type, data, metadata, idempotency_key, type_version)
    VALUES (e->>'stream', version_after, e->>'type', e->'data', coalesce(e->'metadata', '{}'::jsonb),
            e->>'idempotency_key', coalesce((e->>'type_version')::integer, 1))
    RETURNING n.*
  ), registered AS (
    INSERT INTO event_keys (idempotency_key, "position")
    SELECT ins.idempotency_key, ins."position" FROM inserted ins WHERE ins.idempotency_key IS NOT NULL
  )
  SELECT ins."position", ins.tx_id, ins.stream, ins.stream_version, ins.type, ins.data, ins.metadata,
         ins.recorded_at, ins.idempotency_key, ins.type_version, false
  FROM inserted ins;
  PERFORM pg_notify(current_schema() || '_events', '');
END;
$fn$;

-- The batch path of append_events(), same semantics. Nested loops are off because a
-- cached generic plan nest-looped a 10k batch into seconds. Called by append_events(),
-- which validates the arguments first. [011]
CREATE FUNCTION append_events_batch(events jsonb, expected_versions jsonb)
RETURNS TABLE (
  "position" bigint,
  tx_id xid8,
  stream text,
  stream_version bigint,
  type text,
  data jsonb,
  metadata jsonb,
  recorded_at timestamptz,
  idempotency_key text,
  type_version integer,
  duplicate boolean
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
-- Row estimates for jsonb_array_elements and unnest of a variable are guesses (100, 10),
-- so a cached plan may nest-loop 10,000 x 10,000 rows; hash joins are right at any size.
SET enable_nestloop = off
-- On a partitioned log the row estimates of the joins above grow with the partitions'
-- sizes, the plan's cost passed jit_above_cost, and compiling it took 1.9 s of a 10k
-- batch's 2.1 s (auto_explain; ops/bench/eventLog.ts measured keyed batches at 0.18 of the
-- single table's): the statements here are cheap to run and never worth compiling.
SET jit = off
AS $fn$
#variable_conflict use_column
DECLARE
  keys_below bigint := (SELECT l.keys_from FROM event_log l);
  fresh_ords bigint[];
  bumped_streams text[];
  versions_before bigint[];
  want record;
  at integer;
  expected bigint;
BEGIN
  -- Which elements are new: the first of each idempotency key, unless already stored.
  -- Their count per stream bumps the stream rows (in stream order, so two batches over the
  -- same streams lock them in the same order and cannot deadlock each other).
  WITH input AS (
    SELECT x.ord, x.e->>'stream' AS stream, x.e->>'idempotency_key' AS key,
           row_number() OVER (PARTITION BY x.e->>'idempotency_key' ORDER BY x.ord) AS nth
    FROM jsonb_array_elements(events) WITH ORDINALITY AS x(e, ord)
  ), fresh AS (
    SELECT i.ord, i.stream FROM input i
    WHERE i.key IS NULL
       OR (i.nth = 1 AND NOT EXISTS (SELECT 1 FROM event_keys k WHERE k.idempotency_key = i.key)
                     AND NOT EXISTS (SELECT 1 FROM events s WHERE s.idempotency_key = i.key AND s."position" < keys_below))
  ), counts AS (
    SELECT f.stream, count(*) AS n FROM fresh f GROUP BY f.stream
  ), bumped AS (
    INSERT INTO streams AS s (stream, version)
    SELECT c.stream, c.n FROM counts c ORDER BY c.stream
    ON CONFLICT ON CONSTRAINT streams_pkey DO UPDATE SET version = s.version + excluded.version
    RETURNING s.stream, s.version
  )
  SELECT (SELECT array_agg(f.ord) FROM fresh f),
         array_agg(b.stream), array_agg(b.version - c.n)
  INTO fresh_ords, bumped_streams, versions_before
  FROM bumped b JOIN counts c ON c.stream = b.stream;

  -- Optimistic concurrency, checked under the stream row lock taken above. A stream whose
  -- events are all duplicates is not checked: a retried append returns what it stored.
  IF expected_versions IS NOT NULL THEN
    FOR want IN SELECT key, value FROM jsonb_each(expected_versions) LOOP
      IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(events) e WHERE e->>'stream' = want.key) THEN
        RAISE EXCEPTION 'append_events: expected_versions names stream "%" but no event is for it', want.key
          USING ERRCODE = '22023';
      END IF;
      IF want.value = '"any"'::jsonb THEN
        CONTINUE;
      ELSIF want.value = '"no_stream"'::jsonb THEN
        expected := 0;
      ELSIF jsonb_typeof(want.value) = 'number' AND want.value::numeric >= 0
            AND want.value::numeric = trunc(want.value::numeric) THEN
        expected := want.value::bigint;
      ELSE
        RAISE EXCEPTION 'append_events: expected version % for stream "%" is invalid: use a version >= 0, "no_stream" or "any"',
          want.value, want.key USING ERRCODE = '22023';
      END IF;
      at := array_position(bumped_streams, want.key);
      IF at IS NOT NULL AND versions_before[at] <> expected THEN
        RAISE EXCEPTION 'stream "%" is at version %, expected %', want.key, versions_before[at],
          CASE WHEN want.value = '"no_stream"'::jsonb THEN 'no stream' ELSE want.value::text END
          USING ERRCODE = 'OB409',
                DETAIL = jsonb_build_object('stream', want.key, 'expected', want.value,
                                            'actual', versions_before[at])::text;
      END IF;
    END LOOP;
  END IF;

  RETURN QUERY
  WITH input AS (
    SELECT x.ord, x.e->>'stream' AS stream, x.e->>'type' AS type, x.e->'data' AS data,
           coalesce(x.e->'metadata', '{}'::jsonb) AS metadata, x.e->>'idempotency_key' AS key,
           coalesce((x.e->>'type_version')::integer, 1) AS type_version,
           min(x.ord) OVER (PARTITION BY x.e->>'idempotency_key') AS first_ord
    FROM jsonb_array_elements(events) WITH ORDINALITY AS x(e, ord)
  ), numbered AS (
    SELECT i.*, b.before + row_number() OVER (PARTITION BY i.stream ORDER BY i.ord) AS version
    FROM input i
    JOIN unnest(fresh_ords) AS f(ord) ON f.ord = i.ord
    JOIN unnest(bumped_streams, versions_before) AS b(stream, before) ON b.stream = i.stream
  ), inserted AS (
    -- ORDER BY ord: positions follow input order.
    INSERT INTO events (stream, stream_version, type, data, metadata, idempotency_key, type_version)
    SELECT n.stream, n.version, n.type, n.data, n.metadata, n.key, n.type_version FROM numbered n ORDER BY n.ord
    RETURNING *
  ), registered AS (
    INSERT INTO event_keys (idempotency_key, "position")
    SELECT ins.idempotency_key, ins."position" FROM inserted ins WHERE ins.idempotency_key IS NOT NULL
  ), stored_new AS (
    SELECT n.ord, ins.* FROM numbered n
    JOIN inserted ins ON ins.stream = n.stream AND ins.stream_version = n.version
  )
  SELECT r."position", r.tx_id, r.stream, r.stream_version, r.type, r.data, r.metadata,
         r.recorded_at, r.idempotency_key, r.type_version, r.duplicate
  FROM (
    SELECT sn.ord, sn."position", sn.tx_id, sn.stream, sn.stream_version, sn.type, sn.data,
           sn.metadata, sn.recorded_at, sn.idempotency_key, sn.type_version, false AS duplicate
    FROM stored_new sn
    UNION ALL
    -- Repeated earlier in this array: the event stored for its first occurrence.
    SELECT i.ord, sn."position", sn.tx_id, sn.stream, sn.stream_version, sn.type, sn.data,
           sn.metadata, sn.recorded_at, sn.idempotency_key, sn.type_version, true
    FROM input i JOIN stored_new sn ON sn.ord = i.first_ord
    WHERE i.key IS NOT NULL AND i.ord <> i.first_ord
    UNION ALL
    -- Stored by an earlier call (this statement's snapshot does not see its own inserts).
    -- A subquery per key, so the lookup is an index probe even with nested loops off.
    SELECT d.ord, (d.s)."position", (d.s).tx_id, (d.s).stream, (d.s).stream_version, (d.s).type,
           (d.s).data, (d.s).metadata, (d.s).recorded_at, (d.s).idempotency_key, (d.s).type_version, true
    FROM (
      SELECT i.ord, coalesce(
               (SELECT s FROM events s
                WHERE s."position" = (SELECT k."position" FROM event_keys k WHERE k.idempotency_key = i.key)),
               (SELECT s FROM events s WHERE s.idempotency_key = i.key AND s."position" < keys_below)) AS s
      FROM input i WHERE i.key IS NOT NULL
    ) d
    WHERE d.s IS NOT NULL
  ) r
  ORDER BY r.ord;

  IF fresh_ords IS NOT NULL THEN
    -- A constant payload: PostgreSQL folds identical notifications of one transaction into
    -- one, so a transaction that appends many times still wakes followers once, at commit.
    PERFORM pg_notify(current_schema() || '_events', '');
  END IF;
END;
$fn$;

-- ===========================================================================================
-- The event log's lifecycle: partitions, archive, retention
-- ===========================================================================================

-- `events` is partitioned by position range, so that what every processor has long passed
-- can be archived and dropped whole (a DROP TABLE, never a long DELETE), and vacuum and
-- index upkeep touch the recent partitions only. docs/event-log.md is the operator's side.
-- An upgrade with events already stored converts online (`outbatch events partition`,
-- src/events/partitioning.ts), through the functions below. [029]

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
  archived_at timestamptz NOT NULL DEFAULT now(),
  -- The newest recorded_at in the partition: a replay or re-drive `--from <time>` before it
  -- would start inside the archive (the rows are gone, so the time cannot be looked up). [031]
  last_recorded_at timestamptz
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
-- Not SECURITY DEFINER: only the table's owner (the migrating role) archives. [031]
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

-- events is created above as a plain table and converted here, by the same functions an
-- upgrade runs, so both roads name every partition, index and constraint alike: the
-- result is the partitioned events (range partitions events_from_<first position>, and
-- events_overflow, the default) and its sequence events_position_seq. [029]
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

-- NOT VALID because 030 added it to a table that may be large: every row there held the
-- default 1, and validating would have scanned the table under an exclusive lock. New rows
-- are checked all the same. (Written NOT VALID here too, after the conversion as on the
-- migrations' road, so both roads end in the same catalog; CREATE TABLE would mark an
-- inline check valid.) [030]
ALTER TABLE events ADD CONSTRAINT events_type_version_check CHECK (type_version >= 1) NOT VALID;

-- ===========================================================================================
-- Workers and tasks: who runs jobs, what they know, how it went
-- ===========================================================================================

-- Workers heartbeat here. A doing job whose worker row is missing, or silent for longer
-- than the stall timeout that worker declared, is dirty and recovered by any live worker.
-- idle and tasks were added later and so come last: an ALTER TABLE ... ADD COLUMN appends,
-- and column order is part of the schema (SELECT *, the snapshot test). [003, 020, 024]
CREATE TABLE workers (
  id text PRIMARY KEY,
  host text NOT NULL,
  pid integer NOT NULL,
  queues text[],
  concurrency integer NOT NULL,
  stall_timeout_ms integer NOT NULL CHECK (stall_timeout_ms > 0),
  started_at timestamptz NOT NULL DEFAULT now(),
  last_seen_at timestamptz NOT NULL DEFAULT now(),
  -- A worker whose last claim came back full is busy and claims again on its own; only
  -- idle workers need a NOTIFY, and the jobs' insert trigger sends one only when some
  -- idle worker takes the queue (see notify_job below for why). [020]
  idle boolean NOT NULL DEFAULT true,
  -- Which tasks this worker can run. A worker claims only jobs of the tasks it registered
  -- (a rolling deploy's old worker must not take a new task's job and dead-letter it as
  -- unknown), and operators see the jobs that no live worker knows (`jobs stats`, the
  -- dashboard, metric outbatch_jobs_without_worker). NULL: registered by an older build,
  -- which claimed every task; read as "knows every task". [024]
  tasks text[]
);

-- Whether a worker is alive: it heartbeated within its own stall timeout, as of `at`
-- (now(), or the time a recovery or maintenance pass is given). The job_states view and
-- every statement in src/ that asks the question call this one definition. [027]
-- Written so the planner inlines it: one SELECT of one expression, LANGUAGE sql, no SET
-- clause, not SECURITY DEFINER, not STRICT, and no more volatile than declared. Inlined, the
-- call becomes the bare comparison inside the calling statement, planned and estimated like
-- a hand-written condition; a call that is not inlined is an opaque function call per row.
-- Hence the body subtracts two timestamps (immutable) rather than an interval from a
-- timestamp (only stable: a day's length depends on the time zone), so that it can be
-- declared IMMUTABLE truthfully; a body more volatile than its declaration is not inlined.
-- The two forms agree to the microsecond: the interval is whole milliseconds.
CREATE FUNCTION worker_is_live(last_seen_at timestamptz, stall_timeout_ms integer, at timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT at - last_seen_at < stall_timeout_ms * interval '1 millisecond'
$$;

-- What workers know about each task, registered when a worker starts: deferring by name
-- (from a service that does not import the handler, or from SQL) takes the task's queue,
-- priority and retry budget from here, and recovery reads on_stall from here. [003]
-- batch_size and batch_max_wait_ms: a batch task's batching (docs/batches.md), shown by
-- `jobs stats`, the JSON API and the dashboard; NULL for a task run job by job. [034]
CREATE TABLE tasks (
  name text PRIMARY KEY,
  queue text NOT NULL,
  priority integer NOT NULL,
  max_attempts integer NOT NULL CHECK (max_attempts >= 1),
  on_stall text NOT NULL CHECK (on_stall IN ('retry', 'fail')),
  updated_at timestamptz NOT NULL DEFAULT now(),
  batch_size integer CHECK (batch_size BETWEEN 1 AND 1000),
  batch_max_wait_ms integer CHECK (batch_max_wait_ms BETWEEN 0 AND 3600000)
);

-- Per task and minute, updated by the batched completion and failure statements, so
-- the dashboard and `jobs stats` read a few rows instead of scanning history. [003]
CREATE TABLE task_stats (
  task text NOT NULL,
  minute timestamptz NOT NULL,
  succeeded bigint NOT NULL DEFAULT 0,
  retried bigint NOT NULL DEFAULT 0,
  failed bigint NOT NULL DEFAULT 0,
  duration_ms_sum double precision NOT NULL DEFAULT 0,
  duration_ms_max double precision NOT NULL DEFAULT 0,
  PRIMARY KEY (task, minute)
);

-- Retention (src/jobs/maintenance.ts, pruneHistory): each maintenance pass deletes at most
-- one batch of rows older than the retention, found through this index; without it each
-- pass would scan the whole table to find that nothing is old enough, every few seconds,
-- forever. Measured on 400k task_stats, 500k schedule_ticks and 20k audit_log rows: a full
-- batch of 10 000 deletes in 5-16 ms; a pass with nothing old enough is one index probe
-- (0.1 ms). It also serves the dashboard's per-minute throughput (a join on minute that
-- scanned the table). [026]
CREATE INDEX task_stats_minute ON task_stats (minute);

-- ===========================================================================================
-- Jobs: the queue
-- ===========================================================================================

-- The job queue: one table of jobs. Semantics: DESIGN.md (Jobs). The hot path (claim,
-- complete, fail) is in src/jobs/*.ts, one statement each; defer_job() below is the one
-- way to enqueue, shared by the TypeScript API and any other language or trigger. [003]
CREATE TABLE jobs (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  task text NOT NULL CHECK (task <> '' AND length(task) <= 200),
  -- Written with + and length(), not a bounded repetition ({1,100}), which PostgreSQL's
  -- regex engine runs ~5x slower (~4 us per inserted row). [021]
  queue text NOT NULL DEFAULT 'default' CHECK (length(queue) BETWEEN 1 AND 100 AND queue ~ '^[A-Za-z0-9_.-]+$'),
  args jsonb NOT NULL DEFAULT '{}'::jsonb,
  -- 'succeeded' rows exist only when a task keeps them (keepSucceededFor); otherwise
  -- success deletes the row. 'scheduled' (todo, run_at in the future) and 'dirty'
  -- (doing, worker silent) are derived, never stored.
  status text NOT NULL DEFAULT 'todo'
    CHECK (status IN ('todo', 'doing', 'succeeded', 'failed', 'cancelled')),
  priority integer NOT NULL DEFAULT 0,
  run_at timestamptz NOT NULL DEFAULT now(),
  lock text CHECK (lock <> ''),
  queueing_lock text CHECK (queueing_lock <> ''),
  attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
  -- { message, stack } of the latest failure; `errors` keeps one entry per failed attempt.
  last_error jsonb,
  errors jsonb NOT NULL DEFAULT '[]'::jsonb,
  worker_id text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  finished_at timestamptz,
  -- Kept succeeded rows are purged by the workers' maintenance after this time.
  keep_until timestamptz,
  -- The group key of a job: `defer(args, { group })`, for per-group limits and round-robin
  -- across groups (docs/limits.md). NULL: no group. [032]
  group_key text CHECK (group_key <> '' AND length(group_key) <= 200),
  -- A caller waits for this job's outcome (deferAndWait): its success keeps the row (as
  -- `succeeded`, with its result) even when the task does not keep succeeded jobs, and its
  -- final status NOTIFYs the waiter (jobs_done_notify). [033]
  awaited boolean NOT NULL DEFAULT false,
  -- The handler's return value (JSON), stored when the row is kept after success. [033]
  result jsonb,
  -- ctx.progress(value, message): a percentage, throttled by the worker. [033]
  progress real CHECK (progress >= 0 AND progress <= 100),
  progress_message text,
  progress_at timestamptz
);

-- Claim order: priority first, then due time, then creation. Only todo rows are in it,
-- so it stays as small as the backlog. [003]
CREATE INDEX jobs_claim ON jobs (priority DESC, run_at, id) WHERE status = 'todo';
-- At most one running job per lock (DESIGN: lock); the claim also checks it, this is the backstop.
CREATE UNIQUE INDEX jobs_lock_doing ON jobs (lock) WHERE status = 'doing' AND lock IS NOT NULL;
-- Same-lock jobs start in creation order: the claim looks for an earlier due todo with the lock.
CREATE INDEX jobs_lock_todo ON jobs (lock, id) WHERE status = 'todo' AND lock IS NOT NULL;
-- At most one waiting job per queueing lock (DESIGN: queueing_lock).
CREATE UNIQUE INDEX jobs_queueing_lock_todo ON jobs (queueing_lock)
  WHERE status = 'todo' AND queueing_lock IS NOT NULL;
-- Recovery and the dashboard's doing/dirty groups look up running jobs by worker.
CREATE INDEX jobs_doing ON jobs (worker_id) WHERE status = 'doing';
-- Dead letter and the other kept rows, by task, for `jobs list/retry --failed --task`.
CREATE INDEX jobs_kept ON jobs (status, task, updated_at) WHERE status IN ('failed', 'cancelled', 'succeeded');
-- Every todo row is in exactly one of these two, so a defer pays one index entry more.
-- They give the limited claim each queue's (and each group's) jobs in claim order, so it
-- never walks another queue's backlog, nor a busy group's: a limited queue with 1M jobs
-- waiting costs a claim a few index pages (docs/limits.md shows the plan). jobs_claim
-- cannot do that: it is ordered across queues.
CREATE INDEX jobs_queue_todo ON jobs (queue, priority DESC, run_at, id)
  WHERE status = 'todo' AND group_key IS NULL;
CREATE INDEX jobs_group_todo ON jobs (queue, group_key, priority DESC, run_at, id)
  WHERE status = 'todo' AND group_key IS NOT NULL;

-- Due jobs wake idle workers that take their queue: a NOTIFY on channel "<schema>_jobs"
-- with the queue as payload; scheduled jobs are found by polling. PostgreSQL folds
-- identical notifications of one transaction into one per queue. [003]
--
-- Only idle workers, because a transaction that NOTIFYs takes a cluster-wide lock in its
-- pre-commit and holds it through the commit's WAL flush, so every deferring transaction
-- committed one after another: with 10 concurrent callers, defers ran at 2,700/s against
-- 7,000/s without the trigger (ops/bench/RESULTS.md). Trade-off: a transaction that
-- checked while every worker was busy, and commits after one went idle (and claimed), is
-- found by that worker's next poll (pollInterval, 1 s by default) instead of at once.
-- Nothing is lost. [020]
--
-- A row trigger with a WHEN clause, not a statement trigger with a transition table:
-- measured ~38 us per single-row insert against ~56 us (~31 us with no trigger). [021]
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

-- A waiter (deferAndWait) learns that its job reached a final state: NOTIFY on channel
-- "<schema>_done", payload the job id; an awaited row deleted by an operator says so too.
-- Only awaited rows: a NOTIFYing transaction takes a cluster-wide lock through its commit
-- (see notify_job), which the completion batches of jobs nobody waits for must not pay. The
-- WHEN clause is checked per updated row without calling the function. [033]
--
-- Cancelling a running job needs no column: the operator's statement (src/jobs/operate.ts)
-- turns the `doing` row into `cancelled` at once, so every later outcome of that run, which
-- only touches rows still `doing` for its worker and claim, changes nothing; it NOTIFYs
-- "<schema>_cancel" and workers also read their running jobs' status with each heartbeat. [033]
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

-- An awaited row deleted before it ended (an operator's delete of a waiting job) tells its
-- waiter; one deleted after (the purge of kept rows) does not: its waiter was told when the
-- job ended, and a purge must not send a NOTIFY per row. [037]
CREATE TRIGGER jobs_done_notify_delete AFTER DELETE ON jobs
  FOR EACH ROW WHEN (OLD.awaited AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled'))
  EXECUTE FUNCTION notify_job_done();

-- Enqueue one job. Returns (id, enqueued). With a queueing lock that already has a todo
-- job, on_conflict => 'ignore' returns that job's id with enqueued = false, and 'error'
-- (the default) raises unique_violation (23505) naming the existing job. group_key: the
-- job's group (docs/limits.md), a last parameter with a default so callers naming or
-- counting the older ones still work. [032]
-- NULL queue/priority/max_attempts take the task's registered values, then defaults. [003]
--
-- Without a queueing lock it takes a plain INSERT. INSERT ... ON CONFLICT goes through
-- speculative insertion (arbiter index checks, a speculative token, a second pass) even
-- when the row cannot conflict, and most jobs have no queueing lock. Measured (minimum of
-- 12 loops of 3,000 calls, server time): 46 us -> 44 us per call. [023]
--
-- Debounce: on_conflict 'replace' updates the waiting job's args and run_at to the new
-- defer's, 'replace-args' its args only (the run time is kept, as graphile-worker's
-- job_key_mode 'preserve_run_at'); it keeps its id, task, queue, priority, lock, attempts
-- and created_at, and the result is (id, false). One INSERT ... ON CONFLICT DO UPDATE:
-- concurrent replaces of one lock wait for each other's row lock, so exactly one job
-- waits, with the args of the last to commit; a job a worker claimed meanwhile is left
-- alone and a new waiting job is inserted. A job waiting out a retry backoff (attempts > 0)
-- keeps its run_at unless the new one is later: replaces do not cut its backoff short [036].
-- A running (doing) job is never touched: the defer enqueues a waiting job beside it. A replace meeting a waiting job of another task
-- raises unique_violation (HINT outbatch:already_enqueued, DETAIL naming that task). The
-- jobs_notify trigger fires on INSERT only, so a replace that makes a job due now wakes
-- idle workers itself, with the trigger's condition. [034]
CREATE FUNCTION defer_job(
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
#variable_conflict use_column
DECLARE
  known tasks%ROWTYPE;
  new_id bigint;
  existing_id bigint;
  existing_task text;
  inserted boolean;
  due_queue text;
BEGIN
  IF defer_job.task IS NULL OR defer_job.task = '' THEN
    RAISE EXCEPTION 'defer_job: task is required' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF defer_job.on_conflict IS NULL OR defer_job.on_conflict NOT IN ('error', 'ignore', 'replace', 'replace-args') THEN
    RAISE EXCEPTION 'defer_job: on_conflict % is invalid: expected ''error'', ''ignore'', ''replace'' or ''replace-args''', defer_job.on_conflict
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF defer_job.queue IS NULL OR defer_job.priority IS NULL OR defer_job.max_attempts IS NULL THEN
    SELECT * INTO known FROM tasks t WHERE t.name = defer_job.task;
  END IF;
  IF defer_job.queueing_lock IS NULL THEN
    IF defer_job.on_conflict IN ('replace', 'replace-args') THEN
      RAISE EXCEPTION 'defer_job: on_conflict % needs a queueing_lock: it replaces the job waiting with that lock', defer_job.on_conflict
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO jobs AS j (task, args, queue, run_at, priority, lock, max_attempts, group_key)
    VALUES (
      defer_job.task,
      coalesce(defer_job.args, '{}'::jsonb),
      coalesce(defer_job.queue, known.queue, 'default'),
      coalesce(defer_job.run_at, now()),
      coalesce(defer_job.priority, known.priority, 0),
      defer_job.lock,
      coalesce(defer_job.max_attempts, known.max_attempts, 5),
      defer_job.group_key
    )
    RETURNING j.id INTO new_id;
    RETURN QUERY SELECT new_id, true;
    RETURN;
  END IF;
  IF defer_job.on_conflict IN ('replace', 'replace-args') THEN
    INSERT INTO jobs AS j (task, args, queue, run_at, priority, lock, queueing_lock, max_attempts, group_key)
    VALUES (
      defer_job.task,
      coalesce(defer_job.args, '{}'::jsonb),
      coalesce(defer_job.queue, known.queue, 'default'),
      coalesce(defer_job.run_at, now()),
      coalesce(defer_job.priority, known.priority, 0),
      defer_job.lock,
      defer_job.queueing_lock,
      coalesce(defer_job.max_attempts, known.max_attempts, 5),
      defer_job.group_key
    )
    ON CONFLICT (queueing_lock) WHERE status = 'todo' AND queueing_lock IS NOT NULL DO UPDATE
    SET args = excluded.args,
        run_at = CASE
          WHEN defer_job.on_conflict = 'replace-args' THEN j.run_at
          WHEN j.attempts > 0 THEN greatest(excluded.run_at, j.run_at)
          ELSE excluded.run_at
        END,
        updated_at = now()
    WHERE j.task = excluded.task
    RETURNING j.id, j.xmax = 0, CASE WHEN j.run_at <= now() THEN j.queue END
    INTO new_id, inserted, due_queue;
    IF new_id IS NULL THEN
      SELECT j.id, j.task INTO existing_id, existing_task FROM jobs j
      WHERE j.queueing_lock = defer_job.queueing_lock AND j.status = 'todo';
      RAISE EXCEPTION 'a job with queueing lock % is already enqueued (job %) for task %: on_conflict % replaces only a waiting job of the same task',
          defer_job.queueing_lock, existing_id, existing_task, defer_job.on_conflict
        USING ERRCODE = 'unique_violation', HINT = 'outbatch:already_enqueued',
          DETAIL = json_build_object('existing_id', existing_id::text, 'queueing_lock', defer_job.queueing_lock,
                                     'task', existing_task)::text;
    END IF;
    IF NOT inserted AND due_queue IS NOT NULL
       AND EXISTS (SELECT 1 FROM workers w WHERE w.idle AND (w.queues IS NULL OR due_queue = ANY (w.queues))) THEN
      PERFORM pg_notify(current_schema() || '_jobs', due_queue);
    END IF;
    RETURN QUERY SELECT new_id, inserted;
    RETURN;
  END IF;
  -- A queueing-lock conflict may meet a job that leaves todo before we read it: try again.
  FOR i IN 1..5 LOOP
    INSERT INTO jobs AS j (task, args, queue, run_at, priority, lock, queueing_lock, max_attempts, group_key)
    VALUES (
      defer_job.task,
      coalesce(defer_job.args, '{}'::jsonb),
      coalesce(defer_job.queue, known.queue, 'default'),
      coalesce(defer_job.run_at, now()),
      coalesce(defer_job.priority, known.priority, 0),
      defer_job.lock,
      defer_job.queueing_lock,
      coalesce(defer_job.max_attempts, known.max_attempts, 5),
      defer_job.group_key
    )
    ON CONFLICT (queueing_lock) WHERE status = 'todo' AND queueing_lock IS NOT NULL DO NOTHING
    RETURNING j.id INTO new_id;
    IF new_id IS NOT NULL THEN
      RETURN QUERY SELECT new_id, true;
      RETURN;
    END IF;
    SELECT j.id INTO existing_id FROM jobs j
    WHERE j.queueing_lock = defer_job.queueing_lock AND j.status = 'todo';
    IF existing_id IS NOT NULL THEN
      IF defer_job.on_conflict = 'error' THEN
        RAISE EXCEPTION 'a job with queueing lock % is already enqueued (job %)', defer_job.queueing_lock, existing_id
          USING ERRCODE = 'unique_violation', HINT = 'outbatch:already_enqueued',
            DETAIL = json_build_object('existing_id', existing_id::text, 'queueing_lock', defer_job.queueing_lock)::text;
      END IF;
      RETURN QUERY SELECT existing_id, false;
      RETURN;
    END IF;
  END LOOP;
  RAISE EXCEPTION 'defer_job: queueing lock % kept changing; try again', defer_job.queueing_lock
    USING ERRCODE = 'serialization_failure';
END
$$;

-- Many jobs in one call, all or none; results in input order. Same rules as defer_job():
-- without queueing locks it is one set-based INSERT (about 4x faster than a defer_job()
-- call per row); with any queueing lock each row goes through defer_job(), so conflicts
-- inside the batch and with waiting jobs behave exactly as separate calls would. [022]
CREATE FUNCTION defer_jobs(
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
#variable_conflict use_column
DECLARE
  ids regclass := pg_get_serial_sequence('jobs', 'id')::regclass;
BEGIN
  IF EXISTS (SELECT 1 FROM unnest(defer_jobs.queueing_locks) q WHERE q IS NOT NULL) THEN
    RETURN QUERY
    SELECT d.id, d.enqueued
    FROM unnest(defer_jobs.tasks, defer_jobs.args, defer_jobs.queues, defer_jobs.run_ats, defer_jobs.priorities,
                defer_jobs.locks, defer_jobs.queueing_locks, defer_jobs.max_attempts, defer_jobs.on_conflicts,
                defer_jobs.group_keys)
      WITH ORDINALITY AS u(task, args, queue, run_at, priority, lock, queueing_lock, max_attempts, on_conflict, group_key, n)
    CROSS JOIN LATERAL defer_job(u.task, u.args, u.queue, u.run_at, u.priority, u.lock, u.queueing_lock,
                                 u.max_attempts, coalesce(u.on_conflict, 'error'), u.group_key) d
    ORDER BY u.n;
    RETURN;
  END IF;
  IF EXISTS (SELECT 1 FROM unnest(defer_jobs.tasks) t WHERE t IS NULL OR t = '') THEN
    RAISE EXCEPTION 'defer_jobs: every task is required' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- Ids are drawn before the insert so results are returned in input order by id, not
  -- by whatever order INSERT ... RETURNING happens to produce.
  RETURN QUERY
  WITH input AS MATERIALIZED (
    SELECT u.*, nextval(ids) AS new_id
    FROM unnest(defer_jobs.tasks, defer_jobs.args, defer_jobs.queues, defer_jobs.run_ats, defer_jobs.priorities,
                defer_jobs.locks, defer_jobs.max_attempts, defer_jobs.group_keys)
      WITH ORDINALITY AS u(task, args, queue, run_at, priority, lock, max_attempts, group_key, n)
  ), inserted AS (
    INSERT INTO jobs (id, task, args, queue, run_at, priority, lock, max_attempts, group_key)
    OVERRIDING SYSTEM VALUE
    SELECT i.new_id, i.task, coalesce(i.args, '{}'::jsonb), coalesce(i.queue, k.queue, 'default'),
           coalesce(i.run_at, now()), coalesce(i.priority, k.priority, 0), i.lock,
           coalesce(i.max_attempts, k.max_attempts, 5), i.group_key
    FROM input i LEFT JOIN tasks k ON k.name = i.task
    RETURNING 1
  )
  SELECT i.new_id, true FROM input i ORDER BY i.n;
END
$$;

-- Jobs with their derived state, as operators see them: 'scheduled' is todo in the
-- future, 'dirty' is doing on a worker that stopped heartbeating. `jobs list`, `jobs
-- stats` and the dashboard read this. [003; liveness from worker_is_live since 027;
-- re-created by 032 to show group_key and by 033 for its columns]
-- PostgreSQL expands j.* into a column list when the view is created, so a migration that
-- adds a column to jobs must also re-create this view for the column to show here.
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

-- Where a job came from (docs/tracing.md): the job whose handler deferred it, or the
-- processor page (its first and last event positions), or the schedule tick, and the W3C
-- trace context (traceparent, tracestate) it continues. The same JSON shape as an event's
-- metadata.$origin. NULL for a job deferred with no cause and no trace context: most jobs.
-- Not in job_states (created before it, the view keeps its columns): showJob reads it from jobs. [035]
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

-- ===========================================================================================
-- Jobs: flow control (limits, groups, pauses) [032]
-- ===========================================================================================

-- A queue is *limited* when it has a queue_limits row. The plain claim (src/jobs/claim.ts)
-- skips limited queues with one InitPlan over this table (empty: no page to read) and keeps
-- its plan; limited queues are claimed by claim_limited_jobs() below, which a worker calls
-- only while some limit exists (its heartbeat tells it). docs/limits.md.

-- One row per limited queue. NULL: no such limit. rate_max jobs may start per rate_per_ms
-- (a fixed window opened by the first start after the previous one closed); the group_*
-- limits apply to each group key of the queue. paused_until: no job of the queue starts
-- before then (a handler's RateLimited, or an operator). window_*: the current window;
-- rounds: claims that took jobs, for round-robin across groups.
CREATE TABLE queue_limits (
  queue text PRIMARY KEY CHECK (length(queue) BETWEEN 1 AND 100 AND queue ~ '^[A-Za-z0-9_.-]+$'),
  concurrency integer CHECK (concurrency >= 1),
  group_concurrency integer CHECK (group_concurrency >= 1),
  rate_max integer CHECK (rate_max >= 1),
  rate_per_ms bigint CHECK (rate_per_ms >= 1),
  group_rate_max integer CHECK (group_rate_max >= 1),
  group_rate_per_ms bigint CHECK (group_rate_per_ms >= 1),
  paused_until timestamptz,
  window_start timestamptz,
  window_used integer NOT NULL DEFAULT 0,
  rounds bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(),
  CHECK ((rate_max IS NULL) = (rate_per_ms IS NULL)),
  CHECK ((group_rate_max IS NULL) = (group_rate_per_ms IS NULL))
);

-- Per group key of a limited queue: its pause, its rate window, and the round it was last
-- served in (round-robin: the least recently served group goes first). group_key '' is
-- the queue's jobs without a group, for the round-robin only (a job's group is never '').
-- Written only under the queue's queue_limits row lock.
CREATE TABLE queue_groups (
  queue text NOT NULL,
  group_key text NOT NULL,
  paused_until timestamptz,
  window_start timestamptz,
  window_used integer NOT NULL DEFAULT 0,
  last_round bigint,
  PRIMARY KEY (queue, group_key)
);

-- Runs a worker stopped watching while their handler still runs: a running job cancelled,
-- or one past its timeout, whose handler ignored ctx.signal (039). Until the handler
-- returns, the run counts against its queue's and its group's concurrency and holds its
-- lock, in claim_limited_jobs() and the plain claim's lock check. A cancel of a `doing` job
-- inserts its row in the cancelling statement; a worker inserts one before it writes a
-- timed-out attempt's failure; the worker deletes it when the handler returns (its
-- heartbeat sweeps any it no longer runs), recovery when its worker is dead, the worker's
-- stop when it stops.
CREATE TABLE abandoned_runs (
  -- One row per run, not per (job, attempt): `jobs retry` starts a job's attempts again,
  -- so a retried job's new run can have the key of an old run still going (found by review).
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  job_id bigint NOT NULL,
  attempt integer NOT NULL,
  worker_id text NOT NULL,
  queue text NOT NULL,
  group_key text,
  lock text,
  abandoned_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX abandoned_runs_worker ON abandoned_runs (worker_id, job_id);
CREATE INDEX abandoned_runs_queue ON abandoned_runs (queue);
CREATE INDEX abandoned_runs_lock ON abandoned_runs (lock) WHERE lock IS NOT NULL;

-- Claims jobs of limited queues (within their limits) and then of the others, like the
-- plain claim; the same columns as src/jobs/claim.ts returns. Called by workers only while
-- a queue_limits row exists.
--
-- Why the limits hold across workers: each limited queue's row is locked (FOR UPDATE, in
-- queue order, so claimers never deadlock) before its running jobs are counted, and the
-- lock is held until this claim commits. Every statement of a plpgsql function takes a
-- fresh snapshot, so the count, taken after the lock was granted, sees every job the
-- previous holder claimed. Running jobs are counted, not kept in a counter: a lost reply,
-- a reconcile, a recovery of a dead worker's jobs all change `doing` rows, and the count
-- follows; nothing can drift. A dead worker's jobs hold their slots until recovery
-- (stallTimeout) moves them out of `doing`.
--
-- Fairness: free slots go round-robin across the queue's groups (Hatchet's
-- GROUP_ROUND_ROBIN): every group's first job before any group's second, groups least
-- recently served first. Groups are found by a skip scan of jobs_group_todo (one index
-- probe per group with todo jobs), and each group's jobs by a LIMITed scan of it.
--
-- Generic plans (plan_cache_mode): with custom plans, the default, every call planned its
-- two big statements again, 5-25 ms a claim of a small limited queue (379 jobs/s at
-- concurrency 5 in ops/bench/limits.ts); generic plans take the same index scans, ~1 ms.
--
-- Reply lost: as the plain claim (the worker reconciles); the windows counted jobs that go
-- back to todo, so a lost reply can only make a window stricter, never looser. Refused: nothing
-- was claimed and no window moved (one transaction).
-- It returns awaited and origin like the plain claim (038): without them, while any limit
-- existed, a deferAndWait job was deleted on success and its caller told it was gone.
-- Its round-robin list holds only groups with a job startable now (038): groups whose jobs
-- were all scheduled later used to fill it and starve a due group.
-- It keeps the best claim_limit of the limited queues' picks and the other queues' jobs, in
-- priority order (038): limited queues with room used to take the claim first.
-- JIT off (038): behind a pooler the worker's jit=off is lost, and the plain part is estimated
-- high enough to be compiled (~100 ms a claim instead of ~18 ms).
-- Abandoned runs (039) count as running: in the queue's count, the groups' and every lock check.
-- Sorts on (039): the worker's control connections run with enable_sort off for the plain claim.
CREATE FUNCTION claim_limited_jobs(
  claim_queues text[],
  skip_tasks text[],
  claim_limit integer,
  claim_worker text,
  claim_at timestamptz
) RETURNS TABLE (
  id text, task text, queue text, args jsonb, attempts integer, max_attempts integer, priority integer,
  lock text, queueing_lock text, group_key text, run_at_ms float8, created_at_ms float8,
  awaited boolean, origin jsonb
)
LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan SET jit = off SET enable_sort = on AS $$
#variable_conflict use_column
DECLARE
  at timestamptz := coalesce(claim_at, now());
  room integer := claim_limit;
  q queue_limits%ROWTYPE;
  running integer;
  free integer;
  window_open boolean;
  ids bigint[];
  groups text[];
  picked bigint[] := '{}';
  plain bigint[] := '{}';
  kept bigint[];
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  FOR q IN
    SELECT * FROM queue_limits l
    WHERE claim_queues IS NULL OR l.queue = ANY (claim_queues)
    ORDER BY l.queue
    FOR UPDATE
  LOOP
    -- A row left only by a pause that has ended (and no group pause) goes: the queue is plain again.
    IF q.concurrency IS NULL AND q.group_concurrency IS NULL AND q.rate_max IS NULL AND q.group_rate_max IS NULL
       AND (q.paused_until IS NULL OR q.paused_until <= at)
       AND NOT EXISTS (SELECT 1 FROM queue_groups g WHERE g.queue = q.queue AND g.paused_until > at) THEN
      DELETE FROM queue_groups g WHERE g.queue = q.queue;
      DELETE FROM queue_limits l WHERE l.queue = q.queue;
      CONTINUE;
    END IF;
    CONTINUE WHEN room <= 0 OR (q.paused_until IS NOT NULL AND q.paused_until > at);
    free := room;
    IF q.concurrency IS NOT NULL THEN
      SELECT count(*) + (SELECT count(*) FROM abandoned_runs a WHERE a.queue = q.queue) INTO running
      FROM jobs d WHERE d.status = 'doing' AND d.queue = q.queue;
      free := least(free, q.concurrency - running);
    END IF;
    window_open := q.rate_max IS NOT NULL AND q.window_start IS NOT NULL
      AND q.window_start + q.rate_per_ms * interval '1 millisecond' > at;
    IF q.rate_max IS NOT NULL THEN
      free := least(free, q.rate_max - CASE WHEN window_open THEN q.window_used ELSE 0 END);
    END IF;
    CONTINUE WHEN free <= 0;

    WITH RECURSIVE keys (g) AS (
      SELECT (SELECT min(j.group_key) FROM jobs j WHERE j.queue = q.queue AND j.status = 'todo' AND j.group_key IS NOT NULL)
      UNION ALL
      SELECT (SELECT min(j.group_key) FROM jobs j
              WHERE j.queue = q.queue AND j.status = 'todo' AND j.group_key IS NOT NULL AND j.group_key > k.g)
      FROM keys k WHERE k.g IS NOT NULL
    ), running_groups AS (
      SELECT r.g, count(*)::int AS n FROM (
        SELECT d.group_key AS g FROM jobs d
        WHERE d.status = 'doing' AND d.queue = q.queue AND d.group_key IS NOT NULL AND q.group_concurrency IS NOT NULL
        UNION ALL
        SELECT a.group_key FROM abandoned_runs a
        WHERE a.queue = q.queue AND a.group_key IS NOT NULL AND q.group_concurrency IS NOT NULL
      ) r
      GROUP BY r.g
    ), allowed AS (
      -- least() skips NULLs: a group limit not set does not bound. Jobs without a group ('')
      -- are bound by the queue's limits only.
      SELECT k.g, s.last_round,
             CASE WHEN k.g = '' THEN free ELSE least(free,
                   q.group_concurrency - coalesce(r.n, 0),
                   q.group_rate_max - CASE WHEN s.window_start + q.group_rate_per_ms * interval '1 millisecond' > at
                                           THEN s.window_used ELSE 0 END) END AS group_free
      FROM (SELECT k.g FROM keys k WHERE k.g IS NOT NULL UNION ALL SELECT '') k
      LEFT JOIN queue_groups s ON s.queue = q.queue AND s.group_key = k.g
      LEFT JOIN running_groups r ON r.g = k.g
      WHERE k.g = '' OR s.paused_until IS NULL OR s.paused_until <= at
    ), served AS (
      -- The least recently served groups with room and a job they could start now, a few
      -- more than the free slots: only these are read, however many groups the queue has.
      -- The check is made in that order and stops at the limit (OFFSET 0 keeps it above
      -- the sort), so it probes only the groups passed over and the ones served. Found in
      -- review (038): without it, nine groups never served whose jobs were all scheduled
      -- later (or lock-blocked, or of tasks the worker skips) sorted first on every claim
      -- and filled the list, so a due group's jobs never started until those came due.
      SELECT a.* FROM (
        SELECT a.* FROM allowed a WHERE a.group_free > 0 ORDER BY a.last_round NULLS FIRST, a.g OFFSET 0
      ) a
      WHERE CASE WHEN a.g = '' THEN EXISTS (
          SELECT 1 FROM jobs j
          WHERE j.queue = q.queue AND j.status = 'todo' AND j.group_key IS NULL
            AND j.run_at <= at AND NOT (j.task = ANY (skip_tasks))
            AND (j.lock IS NULL OR (
              NOT EXISTS (SELECT 1 FROM jobs d WHERE d.lock = j.lock AND d.status = 'doing')
              AND NOT EXISTS (SELECT 1 FROM abandoned_runs a WHERE a.lock = j.lock)
              AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.lock = j.lock AND e.status = 'todo' AND e.id < j.id AND e.run_at <= at))))
        ELSE EXISTS (
          SELECT 1 FROM jobs j
          WHERE j.queue = q.queue AND j.group_key = a.g AND j.status = 'todo' AND j.group_key IS NOT NULL
            AND j.run_at <= at AND NOT (j.task = ANY (skip_tasks))
            AND (j.lock IS NULL OR (
              NOT EXISTS (SELECT 1 FROM jobs d WHERE d.lock = j.lock AND d.status = 'doing')
              AND NOT EXISTS (SELECT 1 FROM abandoned_runs a WHERE a.lock = j.lock)
              AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.lock = j.lock AND e.status = 'todo' AND e.id < j.id AND e.run_at <= at))))
        END
      LIMIT free + 8
    ), candidates AS (
      SELECT c.id, a.g, a.last_round, c.priority, c.run_at,
             row_number() OVER (PARTITION BY a.g ORDER BY c.priority DESC, c.run_at, c.id) AS n
      FROM served a
      CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at FROM jobs j
        WHERE a.g <> '' AND j.queue = q.queue AND j.group_key = a.g AND j.status = 'todo' AND j.group_key IS NOT NULL
          AND j.run_at <= at AND NOT (j.task = ANY (skip_tasks))
          AND (j.lock IS NULL OR (
            NOT EXISTS (SELECT 1 FROM jobs d WHERE d.lock = j.lock AND d.status = 'doing')
              AND NOT EXISTS (SELECT 1 FROM abandoned_runs a WHERE a.lock = j.lock)
            AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.lock = j.lock AND e.status = 'todo' AND e.id < j.id AND e.run_at <= at)))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT a.group_free
        FOR UPDATE OF j SKIP LOCKED
      ) c
      UNION ALL
      SELECT c.id, a.g, a.last_round, c.priority, c.run_at,
             row_number() OVER (ORDER BY c.priority DESC, c.run_at, c.id) AS n
      FROM served a
      CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at FROM jobs j
        WHERE a.g = '' AND j.queue = q.queue AND j.status = 'todo' AND j.group_key IS NULL
          AND j.run_at <= at AND NOT (j.task = ANY (skip_tasks))
          AND (j.lock IS NULL OR (
            NOT EXISTS (SELECT 1 FROM jobs d WHERE d.lock = j.lock AND d.status = 'doing')
              AND NOT EXISTS (SELECT 1 FROM abandoned_runs a WHERE a.lock = j.lock)
            AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.lock = j.lock AND e.status = 'todo' AND e.id < j.id AND e.run_at <= at)))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT free
        FOR UPDATE OF j SKIP LOCKED
      ) c
    ), chosen AS (
      SELECT c.id, c.g FROM candidates c
      ORDER BY c.n, c.last_round NULLS FIRST, c.priority DESC, c.run_at, c.id
      LIMIT free
    )
    SELECT coalesce(array_agg(c.id), '{}'), coalesce(array_agg(c.g), '{}') INTO ids, groups FROM chosen c;

    CONTINUE WHEN cardinality(ids) = 0;
    picked := picked || ids;
    room := room - cardinality(ids);
  END LOOP;

  -- The queues without limits, in claim order. Each queue's (and each group's) due jobs
  -- come from the head of jobs_queue_todo / jobs_group_todo, so a limited queue's backlog is
  -- never walked here (jobs_claim's order would walk it).
  --
  -- Found in review (038): the limited queues' picks took the room first and these got what
  -- was left, so a limited queue with a backlog and room (concurrency 100, workers with 20
  -- slots) took every claim: a priority-10 job of an unlimited queue never started while it
  -- had jobs. Now up to claim_limit of these are candidates too, and the claim keeps the
  -- best claim_limit of both in the plain claim's order (priority, due time, id); the
  -- limited queues' windows and rounds count only the jobs kept.
  IF claim_limit > 0 THEN
    WITH RECURSIVE plain_queues (queue) AS (
      SELECT (SELECT min(j.queue) FROM jobs j WHERE j.status = 'todo' AND j.group_key IS NULL)
      UNION ALL
      SELECT (SELECT min(j.queue) FROM jobs j WHERE j.status = 'todo' AND j.group_key IS NULL AND j.queue > p.queue)
      FROM plain_queues p WHERE p.queue IS NOT NULL
    ), grouped_queues (queue) AS (
      SELECT (SELECT min(j.queue) FROM jobs j WHERE j.status = 'todo' AND j.group_key IS NOT NULL)
      UNION ALL
      SELECT (SELECT min(j.queue) FROM jobs j WHERE j.status = 'todo' AND j.group_key IS NOT NULL AND j.queue > p.queue)
      FROM grouped_queues p WHERE p.queue IS NOT NULL
    ), groups (queue, g) AS (
      -- The groups of unlimited queues only: a limited queue's groups are not walked here.
      SELECT p.queue, (SELECT min(j.group_key) FROM jobs j
                       WHERE j.queue = p.queue AND j.status = 'todo' AND j.group_key IS NOT NULL)
      FROM grouped_queues p
      WHERE p.queue IS NOT NULL AND (claim_queues IS NULL OR p.queue = ANY (claim_queues))
        AND NOT EXISTS (SELECT 1 FROM queue_limits l WHERE l.queue = p.queue)
      UNION ALL
      SELECT p.queue, (SELECT min(j.group_key) FROM jobs j
                       WHERE j.queue = p.queue AND j.status = 'todo' AND j.group_key IS NOT NULL AND j.group_key > p.g)
      FROM groups p WHERE p.g IS NOT NULL
    ), candidates AS (
      SELECT c.id, c.priority, c.run_at
      FROM plain_queues p
      CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at FROM jobs j
        WHERE j.queue = p.queue AND j.status = 'todo' AND j.group_key IS NULL
          AND j.run_at <= at AND NOT (j.task = ANY (skip_tasks))
          AND (j.lock IS NULL OR (
            NOT EXISTS (SELECT 1 FROM jobs d WHERE d.lock = j.lock AND d.status = 'doing')
              AND NOT EXISTS (SELECT 1 FROM abandoned_runs a WHERE a.lock = j.lock)
            AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.lock = j.lock AND e.status = 'todo' AND e.id < j.id AND e.run_at <= at)))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT claim_limit
        FOR UPDATE OF j SKIP LOCKED
      ) c
      WHERE p.queue IS NOT NULL AND (claim_queues IS NULL OR p.queue = ANY (claim_queues))
        AND NOT EXISTS (SELECT 1 FROM queue_limits l WHERE l.queue = p.queue)
      UNION ALL
      SELECT c.id, c.priority, c.run_at
      FROM groups g
      CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at FROM jobs j
        WHERE j.queue = g.queue AND j.group_key = g.g AND j.status = 'todo' AND j.group_key IS NOT NULL
          AND j.run_at <= at AND NOT (j.task = ANY (skip_tasks))
          AND (j.lock IS NULL OR (
            NOT EXISTS (SELECT 1 FROM jobs d WHERE d.lock = j.lock AND d.status = 'doing')
              AND NOT EXISTS (SELECT 1 FROM abandoned_runs a WHERE a.lock = j.lock)
            AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.lock = j.lock AND e.status = 'todo' AND e.id < j.id AND e.run_at <= at)))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT claim_limit
        FOR UPDATE OF j SKIP LOCKED
      ) c
      WHERE g.g IS NOT NULL
    )
    SELECT coalesce(array_agg(c.id), '{}') INTO plain
    FROM (SELECT c.id FROM candidates c ORDER BY c.priority DESC, c.run_at, c.id LIMIT claim_limit) c;
  END IF;

  SELECT coalesce(array_agg(s.id), '{}') INTO kept
  FROM (SELECT j.id FROM jobs j WHERE j.id = ANY (picked || plain)
        ORDER BY j.priority DESC, j.run_at, j.id LIMIT claim_limit) s;

  -- The limited queues' rate windows and rounds, and their groups' (one row each, in key
  -- order; this claim holds each queue's row lock). Jobs picked but not kept count nowhere.
  IF cardinality(picked) > 0 THEN
    WITH k AS (
      SELECT j.queue, coalesce(j.group_key, '') AS g, count(*)::int AS n FROM jobs j
      WHERE j.id = ANY (picked) AND j.id = ANY (kept)
      GROUP BY j.queue, coalesce(j.group_key, '')
    ), windows AS (
      UPDATE queue_limits l
      SET rounds = l.rounds + 1,
          window_start = CASE WHEN l.rate_max IS NULL THEN NULL
                              WHEN l.window_start + l.rate_per_ms * interval '1 millisecond' > at THEN l.window_start
                              ELSE at END,
          window_used = CASE WHEN l.rate_max IS NULL THEN 0
                             WHEN l.window_start + l.rate_per_ms * interval '1 millisecond' > at THEN l.window_used + p.n
                             ELSE p.n END
      FROM (SELECT k.queue, sum(k.n)::int AS n FROM k GROUP BY k.queue) p
      WHERE l.queue = p.queue
      RETURNING l.queue, l.rounds, l.group_rate_max, l.group_rate_per_ms
    )
    INSERT INTO queue_groups AS s (queue, group_key, window_start, window_used, last_round)
    SELECT k.queue, k.g, CASE WHEN w.group_rate_max IS NULL OR k.g = '' THEN NULL ELSE at END,
           CASE WHEN w.group_rate_max IS NULL OR k.g = '' THEN 0 ELSE k.n END, w.rounds
    FROM k JOIN windows w ON w.queue = k.queue
    ORDER BY k.queue, k.g
    ON CONFLICT (queue, group_key) DO UPDATE
    SET last_round = excluded.last_round,
        window_start = CASE WHEN excluded.window_start IS NULL THEN NULL
                            WHEN s.window_start + (SELECT l.group_rate_per_ms FROM queue_limits l WHERE l.queue = s.queue)
                                 * interval '1 millisecond' > at THEN s.window_start
                            ELSE at END,
        window_used = CASE WHEN excluded.window_start IS NULL THEN 0
                           WHEN s.window_start + (SELECT l.group_rate_per_ms FROM queue_limits l WHERE l.queue = s.queue)
                                * interval '1 millisecond' > at THEN s.window_used + excluded.window_used
                           ELSE excluded.window_used END;
  END IF;

  RETURN QUERY
  UPDATE jobs j
  SET status = 'doing', attempts = j.attempts + 1, worker_id = claim_worker, started_at = at, updated_at = at
  WHERE j.id = ANY (kept)
  RETURNING j.id::text, j.task, j.queue, j.args, j.attempts, j.max_attempts, j.priority, j.lock,
            j.queueing_lock, j.group_key, (extract(epoch FROM j.run_at) * 1000)::float8,
            (extract(epoch FROM j.created_at) * 1000)::float8, j.awaited, j.origin;
END
$$;

-- A handler's RateLimited: the jobs go back to todo (uncounted) due at their retry time,
-- and their queue — or their group, if they have one — is paused until then for every
-- worker. A queue paused with no limits gets a queue_limits row holding only the pause
-- (claim_limited_jobs deletes it once the pause is over). Jobs as {"<id>": attempt}
-- (the claim check of complete.ts) and their retry times in epoch ms, keyed the same way.
-- As with a release, a job whose queueing lock already has a waiting job fails as
-- superseded (it cannot go back to todo).
--
-- Reply lost: only rows still `doing` for this worker and claim are touched, so sending it
-- again changes nothing but the pause, to the same time. Refused: the outcome writer
-- isolates it and records it as a failure (outcomes.ts).
CREATE FUNCTION postpone_jobs(claims jsonb, until_ms jsonb, claim_worker text)
RETURNS TABLE (id text, status text)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH input AS MATERIALIZED (
    SELECT j.id, j.queue, j.group_key, j.queueing_lock,
           to_timestamp((until_ms ->> j.id::text)::float8 / 1000) AS until,
           (SELECT t.id FROM jobs t
            WHERE t.queueing_lock = j.queueing_lock AND t.status = 'todo' AND t.id <> j.id LIMIT 1) AS waiting
    FROM jobs j
    WHERE j.id = ANY (ARRAY(SELECT k::bigint FROM jsonb_object_keys(claims) k))
      AND j.attempts = (claims ->> j.id::text)::int AND j.worker_id = claim_worker AND j.status || '' = 'doing'
    FOR UPDATE OF j
  ), queues_paused AS (
    -- Every queue gets a row (a group's pause needs its queue on the limited claim); only
    -- jobs without a group pause the queue itself. greatest() skips NULLs.
    INSERT INTO queue_limits AS l (queue, paused_until)
    SELECT i.queue, max(i.until) FILTER (WHERE i.group_key IS NULL) FROM input i GROUP BY i.queue ORDER BY i.queue
    ON CONFLICT (queue) DO UPDATE
    SET paused_until = greatest(l.paused_until, excluded.paused_until), updated_at = now()
    RETURNING 1
  ), groups_paused AS (
    INSERT INTO queue_groups AS g (queue, group_key, paused_until)
    SELECT i.queue, i.group_key, max(i.until) FROM input i WHERE i.group_key IS NOT NULL
    GROUP BY i.queue, i.group_key ORDER BY i.queue, i.group_key
    ON CONFLICT (queue, group_key) DO UPDATE SET paused_until = greatest(g.paused_until, excluded.paused_until)
    RETURNING 1
  ), decided AS (
    SELECT i.id, i.until,
           coalesce(i.waiting, CASE WHEN i.queueing_lock IS NOT NULL
             THEN nullif(first_value(i.id) OVER (PARTITION BY i.queueing_lock ORDER BY i.id DESC), i.id) END)
             AS superseded_by
    FROM input i
  )
  UPDATE jobs j
  SET status = CASE WHEN d.superseded_by IS NULL THEN 'todo' ELSE 'failed' END,
      attempts = CASE WHEN d.superseded_by IS NULL THEN greatest(j.attempts - 1, 0) ELSE j.attempts END,
      run_at = CASE WHEN d.superseded_by IS NULL THEN greatest(j.run_at, d.until) ELSE j.run_at END,
      last_error = CASE WHEN d.superseded_by IS NULL THEN j.last_error ELSE jsonb_build_object(
        'message', 'rate limited; not requeued: superseded by job ' || d.superseded_by
          || ' with the same queueing lock', 'supersededBy', d.superseded_by::text) END,
      finished_at = CASE WHEN d.superseded_by IS NULL THEN NULL ELSE now() END,
      worker_id = NULL, started_at = NULL, updated_at = now()
  FROM decided d
  WHERE j.id = d.id
  RETURNING j.id::text, j.status;
END
$$;

-- ===========================================================================================
-- Schedules
-- ===========================================================================================

-- Schedules as last defined in code (kept after a schedule is removed, so its
-- history stays readable) and one row per enqueued tick. The primary key on
-- (schedule, tick) is what makes a tick enqueue exactly once across the cluster. [004]
CREATE TABLE schedules (
  name text PRIMARY KEY,
  kind text NOT NULL CHECK (kind IN ('cron', 'every')),
  expression text NOT NULL,
  timezone text NOT NULL,
  task text NOT NULL,
  -- Ticks before this are never enqueued: a new schedule does not catch up on its own past.
  first_seen_at timestamptz NOT NULL,
  -- A scheduler with this schedule in its code ran then; stale means removed from code.
  last_seen_at timestamptz NOT NULL,
  last_tick timestamptz,
  last_enqueued_at timestamptz
);

-- Retention needs no index of its own here: the primary key (schedule, tick) serves the
-- per-schedule range the prune walks. [026]
CREATE TABLE schedule_ticks (
  schedule text NOT NULL,
  tick timestamptz NOT NULL,
  job_id bigint,
  enqueued_at timestamptz NOT NULL,
  -- How long after its time the tick was enqueued, for the late-schedule signal.
  late_ms bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (schedule, tick)
);

-- ===========================================================================================
-- Processors: batch consumers of the event log
-- ===========================================================================================

-- Batch processors: one row per (processor, version). A version's checkpoint is the
-- (tx_id, position) of the last event its pipeline committed; it moves only in the
-- same transaction as the page's side effects. Rebuilding writes a new version beside
-- the live one; `active` marks the version that serves, and promotion moves it. [005]
CREATE TABLE processors (
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  version integer NOT NULL CHECK (version >= 1),
  active boolean NOT NULL DEFAULT false,
  -- The filter as last defined in code, so status and lag can be computed in SQL.
  types text[],
  stream_prefix text,
  checkpoint_tx xid8 NOT NULL DEFAULT '0',
  checkpoint_position bigint NOT NULL DEFAULT 0,
  paused boolean NOT NULL DEFAULT false,
  -- Set when the retry budget on one event ran out with onPoison 'halt'.
  failed_at timestamptz,
  failed_position bigint,
  last_error text,
  -- The event the last failures were on, and how many runs failed on it in a row.
  failing_position bigint,
  failing_attempts integer NOT NULL DEFAULT 0,
  events_processed bigint NOT NULL DEFAULT 0,
  last_run_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  -- A version replaced by a promotion stops running; its rows are the user's to drop.
  retired_at timestamptz,
  PRIMARY KEY (name, version)
);

-- One serving version per processor: a promotion clears one row and sets another in the
-- same transaction. [005]
CREATE UNIQUE INDEX processors_one_active ON processors (name) WHERE active;

-- Events a processor with onPoison 'skip' gave up on, with the error, for a human. [005]
CREATE TABLE processor_dead_letters (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  processor text NOT NULL,
  version integer NOT NULL,
  position bigint NOT NULL,
  tx_id xid8 NOT NULL,
  stream text NOT NULL,
  type text NOT NULL,
  error text NOT NULL,
  stack text,
  attempts integer NOT NULL,
  failed_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (processor, version, position)
);

-- ===========================================================================================
-- Audit
-- ===========================================================================================

-- Operator actions (replays, promotions, job retries and cancellations from the CLI
-- or dashboard) are recorded here: who, from where, what, and why. [001]
CREATE TABLE audit_log (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  actor text NOT NULL,
  host text NOT NULL,
  action text NOT NULL,
  subject text NOT NULL,
  details jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_log_subject_at ON audit_log (subject, at);
-- Retention: a small table; the index keeps each maintenance pass to the rows it
-- deletes. [026]
CREATE INDEX audit_log_at ON audit_log (at);

-- ===========================================================================================
-- Rebasing transaction ids
-- ===========================================================================================

-- The way out after a logical restore (pg_dump into a cluster whose transaction ids are
-- lower than the stored ones): rewrite every stored transaction id, in order, below the
-- server's. `outbatch events rebase-tx-ids --yes` runs these; see README, "Restoring from
-- a logical backup". [010]
--
-- Every column in stored_tx_ids holds a transaction id that is compared with the events'
-- ids, so all of them are ranked together, by one map, in one transaction:
--   events.tx_id                     the readers' order;
--   processors.checkpoint_tx         every version: active, retired, paused, failed (a
--                                    retired or failed row may be promoted, replayed or
--                                    reset later). A checkpoint is often no event's id (a
--                                    filtered processor moves to the read horizon, xmin - 1),
--                                    which the shared dense rank keeps in place: between the
--                                    same two event ids, or ahead of all of them;
--   processor_dead_letters.tx_id     a copy of its event's id: it stays equal to it;
--   event_log.archived_through_tx,   the archived horizon and each archive's highest id:
--   event_archives.through_tx        readers' checkpoints are compared with them. [029]
-- Rebasing events.tx_id alone (as 010 did) left processor checkpoints on the old cluster's
-- higher ids: a new event sorted before every checkpoint, was processed by nothing, and
-- status reported lag 0. A table added later that holds tx ids adds a UNION ALL line here,
-- in a new migration that replaces this view and rebase_tx_ids(). [025]
--
-- streams holds versions, not transaction ids. Not rebased, on purpose: audit_log details
-- (a replay's previous/checkpoint strings) are the record of what was true when written and
-- are only shown, never read back into a checkpoint; job arguments (re-drive payloads) are
-- the user's data. The rebase's own audit row marks where the ids changed. [025]
--
-- 0 is the start checkpoint, not a transaction id: it stays 0, and leaving it out of the
-- view keeps it out of the ranking and of the count that sizes consume_tx_ids.
-- UNION ALL (not UNION): the horizon check reads the highest id with ORDER BY tx_id DESC
-- LIMIT 1, which PostgreSQL then answers from the top of each branch (a backward scan of
-- events_tx_id_position) instead of reading every event. [025]
CREATE VIEW stored_tx_ids AS
SELECT tx_id FROM events
UNION ALL
SELECT checkpoint_tx FROM processors WHERE checkpoint_tx <> '0'::xid8
UNION ALL
SELECT tx_id FROM processor_dead_letters
UNION ALL
SELECT archived_through_tx FROM event_log WHERE archived_through_tx <> '0'::xid8
UNION ALL
SELECT through_tx FROM event_archives;

-- One transaction per call, each taking a transaction id: moves the server's counter past
-- the range the rebased ids will occupy. The caller turns synchronous_commit off first.
-- No SET search_path: a procedure that COMMITs cannot carry a SET clause, and it names no
-- table. [010]
CREATE PROCEDURE consume_tx_ids(how_many bigint)
LANGUAGE plpgsql
AS $$
BEGIN
  FOR i IN 1..how_many LOOP
    PERFORM pg_current_xact_id();
    COMMIT;
  END LOOP;
END;
$$;

-- Replaces each stored tx id by 2 + its dense rank among all stored ids (3, 4, 5, …: the
-- first normal transaction ids), in every table of stored_tx_ids, preserving order and
-- equality across tables, in one transaction that blocks appenders. 0 stays 0. The highest
-- new id is read with ORDER BY ... DESC LIMIT 1: PostgreSQL 13 has no max(xid8). [010, 025, 028]
CREATE FUNCTION rebase_tx_ids()
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
