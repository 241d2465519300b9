-- Event type versions (docs/upcasting.md): each event records the version of its type's
-- shape that the appending code wrote, so readers can upcast older shapes on read while
-- the stored rows stay as written. Existing events were all written before versions
-- existed: they are version 1.
--
-- ADD COLUMN with a constant default is instant (PostgreSQL 11+ keeps the default in the
-- catalog; no rewrite, and NOT NULL needs no scan when the default is not null). An inline
-- CHECK would not be: validating it scans the whole table under the ACCESS EXCLUSIVE lock
-- (measured: pg_stat_user_tables.seq_scan goes up by one). Every existing row holds the
-- default 1, which passes, so the check is added NOT VALID: new rows are checked, old
-- ones need not be. A plain column with a default and a check, nothing naming other
-- columns: it survives a CREATE TABLE (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS).
ALTER TABLE events ADD COLUMN type_version integer NOT NULL DEFAULT 1;
ALTER TABLE events ADD CONSTRAINT events_type_version_check CHECK (type_version >= 1) NOT VALID;

-- append_events() and append_events_batch(): the same semantics as 011, plus an optional
-- "type_version" per element (a whole number >= 1, default 1), stored in
-- events.type_version and returned as a column before "duplicate". The result changes, so
-- DROP + CREATE (CREATE OR REPLACE cannot change a function's result columns).
--
-- Idempotency keys now go through event_keys (029): each stored key is registered there in
-- the same statement, and a key is looked up there, then its event by position (one index
-- probe and one pruned partition, however many partitions there are), or, for a key stored
-- before this migration, in the old table's unique index (position < keys_from, which
-- prunes every newer partition). Two transactions appending the same new key at once: the
-- later one fails on event_keys_pkey, and a retry returns the stored event. A per-row
-- trigger did the registering first: a PL/pgSQL call per keyed event cost a fifth of a
-- keyed batch's throughput (ops/bench/eventLog.ts); a statement of the batch costs little.
--
-- keys_from is where registering begins: the sequence's next position, read under a lock
-- that waits for the appends in flight (old code, without registering) to commit, and
-- stops new ones for the moment it takes; keys below it are in the old table's index.
LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE;
UPDATE event_log SET keys_from = (SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM events_position_seq);

DROP FUNCTION append_events(jsonb, jsonb);
DROP FUNCTION append_events_batch(jsonb, jsonb);

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
