-- Least-privilege roles for one outbatch schema. Run it as the schema's owner (the role
-- that ran `outbatch migrate`), with search_path set to the schema:
--
--   PGOPTIONS='-c search_path=outbatch' psql "$DATABASE_URL" -f ops/sql/roles.sql
--
-- It creates three NOLOGIN group roles (prefix from the setting outbatch.role_prefix,
-- default "outbatch") and grants them what each part of outbatch needs; grant them to
-- your login roles (GRANT outbatch_worker TO my_worker_login). Rerunning is safe, and
-- rerun it after upgrading outbatch so new tables get their grants (new tables and
-- functions the owner creates get the read and execute grants at once: see the default
-- privileges at the end).
--
--   <prefix>_appender   services: append events and defer jobs (SQL functions or the
--                       TypeScript API in their own transaction); nothing else
--   <prefix>_worker     outbatch worker and operator commands: run jobs, schedules,
--                       processors, replays
--   <prefix>_dashboard  read-only: the dashboard's views and /metrics (actions need a
--                       worker role as well)
--
-- A separate migration owner (what managed PostgreSQL allows: no superuser, no CREATEDB).
-- As the administrator, once:
--
--   CREATE ROLE outbatch_owner LOGIN PASSWORD '...' NOSUPERUSER NOCREATEDB;
--   GRANT CREATE ON DATABASE app TO outbatch_owner;   -- it creates the outbatch schema
--   -- only if outbatch_owner may not create roles (no CREATEROLE):
--   CREATE ROLE outbatch_appender NOLOGIN;
--   CREATE ROLE outbatch_worker NOLOGIN;
--   CREATE ROLE outbatch_dashboard NOLOGIN;
--
-- then, as outbatch_owner: `outbatch migrate` and this file. The services, workers and
-- dashboard log in as roles that own nothing and are members of the group roles
-- (GRANT outbatch_worker TO my_worker_login, by the administrator or a CREATEROLE owner).
-- Without CREATEROLE this file names the group roles it cannot create and changes nothing.
-- The dashboard's view of other sessions (the oldest open transaction) needs
-- pg_read_all_stats, which only a role holding it with the admin option can grant: without
-- it this file says so in a NOTICE and the dashboard shows those sessions without details.
--
-- The SQL functions run with the caller's rights, so what a role may do is decided by
-- the table grants below. The projections your processors write (your own tables) are
-- yours to grant to the worker role.
DO $roles$
DECLARE
  s text := current_schema();
  prefix text := coalesce(nullif(current_setting('outbatch.role_prefix', true), ''), 'outbatch');
  appender text := prefix || '_appender';
  worker text := prefix || '_worker';
  dashboard text := prefix || '_dashboard';
  r text;
  missing text;
BEGIN
  IF s IS NULL OR to_regclass(quote_ident(s) || '.migrations') IS NULL THEN
    RAISE EXCEPTION 'roles.sql: search_path must name a migrated outbatch schema (got %)', coalesce(s, 'none');
  END IF;
  IF prefix !~ '^[a-z_][a-z0-9_]{0,40}$' THEN
    RAISE EXCEPTION 'roles.sql: outbatch.role_prefix % is invalid: use lower-case letters, digits and _', prefix;
  END IF;
  SELECT string_agg(m, ', ') INTO missing
  FROM unnest(ARRAY[appender, worker, dashboard]) AS m
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = m);
  IF missing IS NOT NULL
     AND NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
    RAISE EXCEPTION 'roles.sql: % cannot create roles (no CREATEROLE) and these do not exist: %; have an administrator run CREATE ROLE <name> NOLOGIN for each, then run this file again',
      current_user, missing;
  END IF;
  FOREACH r IN ARRAY ARRAY[appender, worker, dashboard] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', r);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', s, r);
  END LOOP;

  -- Appender: the outbox and the queue's front door. INSERT ... RETURNING and the
  -- idempotency / queueing-lock lookups need SELECT on the rows they touch.
  EXECUTE format('GRANT SELECT, INSERT ON %I.events TO %I', s, appender);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.streams TO %I', s, appender);
  EXECUTE format('GRANT SELECT, INSERT ON %I.jobs TO %I', s, appender);
  -- deferAndWait marks its job awaited in the deferring transaction (schema/033).
  EXECUTE format('GRANT UPDATE (awaited) ON %I.jobs TO %I', s, appender);
  EXECUTE format('GRANT SELECT ON %I.tasks TO %I', s, appender);
  -- The insert trigger wakes workers only when one is idle: it reads the workers table.
  EXECUTE format('GRANT SELECT ON %I.workers TO %I', s, appender);
  -- Idempotency keys: append_events() looks them up and registers them in event_keys, and
  -- reads where registering began in event_log (schema/029, 030). A read (events.read,
  -- follow) checks the archived horizon in event_log, and a refused one names the archive
  -- from event_archives (src/events/archivedHorizon.ts).
  EXECUTE format('GRANT SELECT, INSERT ON %I.event_keys TO %I', s, appender);
  EXECUTE format('GRANT SELECT ON %I.event_log, %I.event_archives TO %I', s, s, appender);
  EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO %I', s, appender);
  -- Sequences are not tables to GRANT ... ON ALL TABLES: the bulk append (COPY) reads the
  -- position sequence's last value, and defer_jobs() draws job ids with nextval() itself.
  -- Since 029 events.position is a plain sequence default, not an identity: every insert
  -- draws it with nextval(), which needs USAGE.
  FOREACH r IN ARRAY ARRAY[appender, worker] LOOP
    EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I', pg_get_serial_sequence(format('%I.events', s), 'position'), r);
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', pg_get_serial_sequence(format('%I.jobs', s), 'id'), r);
  END LOOP;

  -- Worker: everything that runs, nothing that reshapes the schema. It never deletes or
  -- rewrites events (so rebase_tx_ids, which does, stays with the owner).
  EXECUTE format('GRANT SELECT, INSERT ON %I.events TO %I', s, worker);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.streams TO %I', s, worker);
  EXECUTE format('GRANT SELECT, INSERT ON %I.event_keys TO %I', s, worker);
  FOREACH r IN ARRAY ARRAY['jobs', 'workers', 'tasks', 'task_stats', 'schedules', 'schedule_ticks', 'processors',
                           'processor_dead_letters', 'queue_limits', 'queue_groups'] LOOP
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO %I', s, r, worker);
  END LOOP;
  EXECUTE format('GRANT SELECT, INSERT ON %I.audit_log TO %I', s, worker);
  EXECUTE format('GRANT SELECT ON %I.migrations TO %I', s, worker);
  EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', s, worker);
  EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO %I', s, worker);
  -- Partitions ahead are the worker's upkeep (029 revokes them from PUBLIC); not the appender's.
  EXECUTE format('REVOKE EXECUTE ON FUNCTION %I.create_event_partition(bigint, bigint), %I.create_event_partitions_ahead() FROM %I', s, s, appender);

  -- Dashboard: read everything (and the server's activity, for the oldest transaction).
  EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', s, dashboard);
  BEGIN
    EXECUTE format('GRANT pg_read_all_stats TO %I', dashboard);
  EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'roles.sql: % may not grant pg_read_all_stats; the dashboard shows other roles'' sessions without their start time and query until an administrator runs GRANT pg_read_all_stats TO %',
      current_user, dashboard;
  END;

  -- What the owner creates in this schema later (a newer outbatch's migrations) can be read
  -- by the worker and the dashboard, and its functions called, before this file is rerun;
  -- the finer grants above (INSERT, UPDATE, DELETE) still need the rerun.
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO %I, %I', s, worker, dashboard);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT EXECUTE ON FUNCTIONS TO %I, %I', s, appender, worker);
END
$roles$;
