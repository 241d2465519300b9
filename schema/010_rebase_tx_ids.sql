-- The way out after a logical restore (pg_dump into a cluster whose transaction ids are
-- lower than the stored tx_ids): rewrite the stored ids, in order, below the server's.
-- `outbatch events rebase-tx-ids --yes` runs these; see README, "Restoring from a logical backup".

-- Every stored transaction id that must keep its place in the order. Tables added later
-- that hold tx ids (processor checkpoints) add a UNION line here, in a new migration that
-- replaces this view, so their ids are ranked together with the events' ids.
CREATE VIEW stored_tx_ids AS
SELECT tx_id FROM events;

-- One transaction per call, each taking a transaction id: moves the server's counter past
-- the range the rebased ids will occupy. The caller turns synchronous_commit off first.
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
-- first normal transaction ids), preserving (tx_id, position) order, in one transaction
-- that blocks appenders. The map is kept in tx_id_map for the statements that remap
-- other tables in the same transaction. 0 (the start checkpoint) stays 0.
CREATE FUNCTION rebase_tx_ids() RETURNS TABLE (distinct_ids bigint, events_updated bigint, highest_new xid8)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
  mine xid8 := pg_current_xact_id();
BEGIN
  LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE;
  CREATE TEMP TABLE tx_id_map ON COMMIT DROP AS
  SELECT old, (2 + dense_rank() OVER (ORDER BY old))::text::xid8 AS new
  FROM (SELECT DISTINCT tx_id AS old FROM stored_tx_ids WHERE tx_id <> '0'::xid8) ids;
  SELECT count(*), coalesce(max(m.new), '0'::xid8) INTO distinct_ids, highest_new FROM tx_id_map m;
  IF highest_new >= mine THEN
    RAISE EXCEPTION 'rebase_tx_ids: % distinct tx ids need the server past %, but it is at %: call consume_tx_ids(%) first',
      distinct_ids, highest_new, mine, (highest_new::text::bigint - mine::text::bigint + 1)
      USING ERRCODE = '55000';
  END IF;
  UPDATE events e SET tx_id = m.new FROM tx_id_map m WHERE e.tx_id = m.old;
  GET DIAGNOSTICS events_updated = ROW_COUNT;
  RETURN NEXT;
END;
$$;
