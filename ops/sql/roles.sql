-- Least-privilege roles for one outbatch schema. Run it as the schema's owner (the role
-- that ran `outbatch migrate`), with search_path set to the schema:
--
--   PGOPTIONS='-c search_path=outbatch' psql "$DATABASE_URL" -f ops/sql/roles.sql
--
-- It creates three NOLOGIN group roles (prefix from the setting outbatch.role_prefix,
-- default "outbatch") and grants them what each part of outbatch needs; grant them to
-- your login roles (GRANT outbatch_worker TO my_worker_login). Rerunning is safe, and
-- rerun it after upgrading outbatch so new tables get their grants.
--
--   <prefix>_appender   services: append events and defer jobs (SQL functions or the
--                       TypeScript API in their own transaction); nothing else
--   <prefix>_worker     outbatch worker and operator commands: run jobs, schedules,
--                       processors, replays
--   <prefix>_dashboard  read-only: the dashboard's views and /metrics (actions need a
--                       worker role as well)
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
BEGIN
  IF s IS NULL OR to_regclass(quote_ident(s) || '.migrations') IS NULL THEN
    RAISE EXCEPTION 'roles.sql: search_path must name a migrated outbatch schema (got %)', coalesce(s, 'none');
  END IF;
  IF prefix !~ '^[a-z_][a-z0-9_]{0,40}$' THEN
    RAISE EXCEPTION 'roles.sql: outbatch.role_prefix % is invalid: use lower-case letters, digits and _', prefix;
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
  EXECUTE format('GRANT SELECT ON %I.tasks TO %I', s, appender);
  -- The insert trigger wakes workers only when one is idle: it reads the workers table.
  EXECUTE format('GRANT SELECT ON %I.workers TO %I', s, appender);
  EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO %I', s, appender);

  -- Worker: everything that runs, nothing that reshapes the schema. It never deletes or
  -- rewrites events (so rebase_tx_ids, which does, stays with the owner).
  EXECUTE format('GRANT SELECT, INSERT ON %I.events TO %I', s, worker);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.streams TO %I', s, worker);
  FOREACH r IN ARRAY ARRAY['jobs', 'workers', 'tasks', 'task_stats', 'schedules', 'schedule_ticks', 'processors',
                           'processor_dead_letters'] LOOP
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO %I', s, r, worker);
  END LOOP;
  EXECUTE format('GRANT SELECT, INSERT ON %I.audit_log TO %I', s, worker);
  EXECUTE format('GRANT SELECT ON %I.migrations TO %I', s, worker);
  EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', s, worker);
  EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO %I', s, worker);

  -- Dashboard: read everything (and the server's activity, for the oldest transaction).
  EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', s, dashboard);
  EXECUTE format('GRANT pg_read_all_stats TO %I', dashboard);
END
$roles$;
