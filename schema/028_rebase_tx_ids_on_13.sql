-- PostgreSQL 13 has no max(xid8) (the aggregate arrived in 14), so 025's rebase_tx_ids()
-- failed there at its first call, after a restore, when it is needed. The highest new id
-- is now read with ORDER BY ... DESC LIMIT 1, which needs only xid8's btree ordering (13
-- has it); the rest of the body is 025's. Found by running the suite on 13
-- (ops/matrix/run --pg 13); test/events/txIdHorizon.test.ts calls it on every major CI runs.
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
  LOCK TABLE events, processor_dead_letters, processors IN SHARE ROW EXCLUSIVE MODE;
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
  RETURN NEXT;
END;
$$;
