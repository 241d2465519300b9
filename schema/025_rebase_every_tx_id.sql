-- Rebase every stored transaction id, not only the events'. Migration 010 ranked and
-- rewrote events.tx_id alone, so after a logical restore processors.checkpoint_tx kept the
-- old cluster's (higher) ids: a new event sorted before every checkpoint, was processed by
-- nothing, and status reported lag 0. Every column below holds a transaction id that is
-- compared with the events' ids, so all of them are ranked together, by one map, in one
-- transaction:
--   events.tx_id                     the readers' order;
--   processors.checkpoint_tx         every version: active, retired, paused, failed (a
--                                    retired or failed row may be promoted, replayed or
--                                    reset later). A checkpoint is often no event's id (a
--                                    filtered processor moves to the read horizon, xmin - 1),
--                                    which the shared dense rank keeps in place: between the
--                                    same two event ids, or ahead of all of them;
--   processor_dead_letters.tx_id     a copy of its event's id: it stays equal to it.
-- streams holds versions, not transaction ids. Not rebased, on purpose: audit_log details
-- (a replay's previous/checkpoint strings) are the record of what was true when written and
-- are only shown, never read back into a checkpoint; job arguments (re-drive payloads) are
-- the user's data. The rebase's own audit row marks where the ids changed.

-- 0 is the start checkpoint, not a transaction id: it stays 0, and leaving it out of the
-- view keeps it out of the ranking and of the count that sizes consume_tx_ids.
-- UNION ALL (not UNION): the horizon check reads the highest id with ORDER BY tx_id DESC
-- LIMIT 1, which PostgreSQL then answers from the top of each branch (a backward scan of
-- events_tx_id_position) instead of reading every event.
CREATE OR REPLACE VIEW stored_tx_ids AS
SELECT tx_id FROM events
UNION ALL
SELECT checkpoint_tx FROM processors WHERE checkpoint_tx <> '0'::xid8
UNION ALL
SELECT tx_id FROM processor_dead_letters;

-- The result gains a count per table, so the function is dropped and created again
-- (CREATE OR REPLACE cannot change a result type).
DROP FUNCTION rebase_tx_ids();

-- Replaces each stored tx id by 2 + its dense rank among all stored ids (3, 4, 5, …: the
-- first normal transaction ids), in every table of stored_tx_ids, preserving order and
-- equality across tables. 0 stays 0.
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
  LOCK TABLE events, processor_dead_letters, processors IN SHARE ROW EXCLUSIVE MODE;
  CREATE TEMP TABLE tx_id_map ON COMMIT DROP AS
  SELECT old, (2 + dense_rank() OVER (ORDER BY old))::text::xid8 AS new
  FROM (SELECT DISTINCT tx_id AS old FROM stored_tx_ids WHERE tx_id <> '0'::xid8) ids;
  SELECT count(*), coalesce(max(m.new), '0'::xid8) INTO distinct_ids, highest_new FROM tx_id_map m;
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
  RETURN NEXT;
END;
$$;
