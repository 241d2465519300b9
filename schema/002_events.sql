-- The event outbox. Services append in their own transaction; readers walk the log in
-- (tx_id, position) order and only below the oldest running transaction, so an event
-- that commits late is never skipped (see "gap-safe" in the README).
CREATE TABLE events (
  position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tx_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
  stream text NOT NULL CHECK (length(stream) BETWEEN 1 AND 200),
  stream_version bigint NOT NULL CHECK (stream_version >= 1),
  type text NOT NULL CHECK (length(type) BETWEEN 1 AND 200),
  data jsonb NOT NULL,
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
  recorded_at timestamptz NOT NULL DEFAULT now(),
  idempotency_key text UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 200)
);

-- The readers' order, and the checkpoint's key.
CREATE INDEX events_tx_id_position ON events (tx_id, position);
-- One version per stream: the last line of defence behind the streams row lock.
CREATE UNIQUE INDEX events_stream_version ON events (stream, stream_version);
-- Processors that filter by type walk this index in the readers' order.
CREATE INDEX events_type ON events (type, tx_id, position);

-- The current version of every stream. Appenders bump it with one upsert, whose row lock
-- serialises appenders to the same stream until commit, so versions stay contiguous
-- without retries; a rolled back append rolls the bump back with it.
CREATE TABLE streams (
  stream text PRIMARY KEY,
  version bigint NOT NULL CHECK (version >= 0)
);

-- append_events(events, expected_versions): the outbox for any language and for triggers.
--   events: a JSON array of {"stream", "type", "data", "metadata"?, "idempotency_key"?}
--   expected_versions: optional JSON object {"<stream>": <version> | "no_stream" | "any"}
-- Returns one row per input element, in input order: the stored event, with
-- duplicate = true when an event with that idempotency key was already stored (by an
-- earlier call or earlier in this array). A stream that moved raises SQLSTATE OB409 with
-- DETAIL {"stream", "expected", "actual"}. One NOTIFY <schema>_events per transaction.
-- Run it in READ COMMITTED (the default): two transactions appending the same new
-- idempotency key at the same moment make the later one fail with a unique violation on
-- events_idempotency_key_key, and a retry returns the stored event.
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
  duplicate boolean
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
  fresh_ords bigint[];
  bumped_streams text[];
  versions_before bigint[];
  want record;
  at integer;
  expected bigint;
BEGIN
  IF events IS NULL OR jsonb_typeof(events) <> 'array' THEN
    RAISE EXCEPTION 'append_events: events must be a JSON array of {"stream", "type", "data"} objects'
      USING ERRCODE = '22023';
  END IF;
  IF expected_versions IS NOT NULL AND jsonb_typeof(expected_versions) <> 'object' THEN
    RAISE EXCEPTION 'append_events: expected_versions must be a JSON object {"<stream>": <version> | "no_stream" | "any"}'
      USING ERRCODE = '22023';
  END IF;

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
       OR (i.nth = 1 AND NOT EXISTS (SELECT 1 FROM events s WHERE s.idempotency_key = i.key))
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
           min(x.ord) OVER (PARTITION BY x.e->>'idempotency_key') AS first_ord
    FROM jsonb_array_elements(events) WITH ORDINALITY AS x(e, ord)
  ), numbered AS (
    SELECT i.*, b.before + row_number() OVER (PARTITION BY i.stream ORDER BY i.ord) AS version
    FROM input i
    JOIN unnest(fresh_ords) AS f(ord) ON f.ord = i.ord
    JOIN unnest(bumped_streams, versions_before) AS b(stream, before) ON b.stream = i.stream
  ), inserted AS (
    -- ORDER BY ord: positions follow input order.
    INSERT INTO events (stream, stream_version, type, data, metadata, idempotency_key)
    SELECT n.stream, n.version, n.type, n.data, n.metadata, n.key FROM numbered n ORDER BY n.ord
    RETURNING *
  ), stored_new AS (
    SELECT n.ord, ins.* FROM numbered n
    JOIN inserted ins ON ins.stream = n.stream AND ins.stream_version = n.version
  )
  SELECT r."position", r.tx_id, r.stream, r.stream_version, r.type, r.data, r.metadata,
         r.recorded_at, r.idempotency_key, r.duplicate
  FROM (
    SELECT sn.ord, sn."position", sn.tx_id, sn.stream, sn.stream_version, sn.type, sn.data,
           sn.metadata, sn.recorded_at, sn.idempotency_key, false AS duplicate
    FROM stored_new sn
    UNION ALL
    -- Repeated earlier in this array: the event stored for its first occurrence.
    SELECT i.ord, sn."position", sn.tx_id, sn.stream, sn.stream_version, sn.type, sn.data,
           sn.metadata, sn.recorded_at, sn.idempotency_key, true
    FROM input i JOIN stored_new sn ON sn.ord = i.first_ord
    WHERE i.key IS NOT NULL AND i.ord <> i.first_ord
    UNION ALL
    -- Stored by an earlier call (this statement's snapshot does not see its own inserts).
    SELECT i.ord, s."position", s.tx_id, s.stream, s.stream_version, s.type, s.data,
           s.metadata, s.recorded_at, s.idempotency_key, true
    FROM input i JOIN events s ON s.idempotency_key = i.key
    WHERE i.key IS NOT NULL
  ) r
  ORDER BY r.ord;

  IF fresh_ords IS NOT NULL THEN
    -- A constant payload: PostgreSQL folds identical notifications of one transaction into
    -- one, so a transaction that appends many times still wakes followers once, at commit.
    PERFORM pg_notify(current_schema() || '_events', '');
  END IF;
END;
$fn$;
