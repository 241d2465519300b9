-- Batch processors: one row per (processor, version). A version's checkpoint is the
-- (tx_id, position) of the last event its pipeline committed; it moves only in the
-- same transaction as the page's side effects. Rebuilding writes a new version beside
-- the live one; `active` marks the version that serves, and promotion moves it.
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

CREATE UNIQUE INDEX processors_one_active ON processors (name) WHERE active;

-- Events a processor with onPoison 'skip' gave up on, with the error, for a human.
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
