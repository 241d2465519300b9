-- Flow control (docs/limits.md): concurrency and rate limits per queue and per group key
-- within a queue, round-robin across groups, and pauses asked for by a handler
-- (RateLimited). Enforced in the claim, so they hold across every worker process.
--
-- A queue is *limited* when it has a queue_limits row. The plain claim (src/jobs/claim.ts)
-- skips limited queues with one InitPlan over this table (empty: no page to read) and keeps
-- its plan; limited queues are claimed by claim_limited_jobs() below, which a worker calls
-- only while some limit exists (its heartbeat tells it). Measured: ops/bench jobs suite,
-- docs/limits.md "What it costs".

-- The group key of a job: `defer(args, { group })`. NULL: no group.
ALTER TABLE jobs ADD COLUMN group_key text CHECK (group_key <> '' AND length(group_key) <= 200);

-- Every todo row is in exactly one of these two, so a defer pays one index entry more.
-- They give the limited claim each queue's (and each group's) jobs in claim order, so it
-- never walks another queue's backlog, nor a busy group's: a limited queue with 1M jobs
-- waiting costs a claim a few index pages (docs/limits.md shows the plan). jobs_claim
-- cannot do that: it is ordered across queues.
CREATE INDEX jobs_queue_todo ON jobs (queue, priority DESC, run_at, id)
  WHERE status = 'todo' AND group_key IS NULL;
CREATE INDEX jobs_group_todo ON jobs (queue, group_key, priority DESC, run_at, id)
  WHERE status = 'todo' AND group_key IS NOT NULL;

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
CREATE FUNCTION claim_limited_jobs(
  claim_queues text[],
  skip_tasks text[],
  claim_limit integer,
  claim_worker text,
  claim_at timestamptz
) RETURNS TABLE (
  id text, task text, queue text, args jsonb, attempts integer, max_attempts integer, priority integer,
  lock text, queueing_lock text, group_key text, run_at_ms float8, created_at_ms float8
)
LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan AS $$
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
      SELECT count(*) INTO running FROM jobs d WHERE d.status = 'doing' AND d.queue = q.queue;
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
      SELECT d.group_key AS g, count(*)::int AS n FROM jobs d
      WHERE d.status = 'doing' AND d.queue = q.queue AND d.group_key IS NOT NULL AND q.group_concurrency IS NOT NULL
      GROUP BY d.group_key
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
      -- The least recently served groups with room, a few more than the free slots (a group
      -- may have no due job): only these are read, however many groups the queue has.
      SELECT a.* FROM allowed a WHERE a.group_free > 0 ORDER BY a.last_round NULLS FIRST, a.g LIMIT free + 8
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
    UPDATE queue_limits l
    SET rounds = l.rounds + 1,
        window_start = CASE WHEN q.rate_max IS NULL THEN NULL WHEN window_open THEN l.window_start ELSE at END,
        window_used = CASE WHEN q.rate_max IS NULL THEN 0 WHEN window_open THEN l.window_used + cardinality(ids)
                           ELSE cardinality(ids) END
    WHERE l.queue = q.queue;
    -- Group rows in key order (one claimer per queue at a time holds the queue's lock anyway).
    INSERT INTO queue_groups AS s (queue, group_key, window_start, window_used, last_round)
    SELECT q.queue, u.g, CASE WHEN q.group_rate_max IS NULL OR u.g = '' THEN NULL ELSE at END,
           CASE WHEN q.group_rate_max IS NULL OR u.g = '' THEN 0 ELSE count(*)::int END, q.rounds + 1
    FROM unnest(groups) AS u(g)
    GROUP BY u.g ORDER BY u.g
    ON CONFLICT (queue, group_key) DO UPDATE
    SET last_round = excluded.last_round,
        window_start = CASE WHEN excluded.window_start IS NULL THEN NULL
                            WHEN s.window_start + q.group_rate_per_ms * interval '1 millisecond' > at THEN s.window_start
                            ELSE at END,
        window_used = CASE WHEN excluded.window_start IS NULL THEN 0
                           WHEN s.window_start + q.group_rate_per_ms * interval '1 millisecond' > at
                             THEN s.window_used + excluded.window_used
                           ELSE excluded.window_used END;
  END LOOP;

  -- The queues without limits, in claim order. Each queue's (and each group's) due jobs
  -- come from the head of jobs_queue_todo / jobs_group_todo, so a limited queue's backlog is
  -- never walked here (jobs_claim's order would walk it).
  IF room > 0 THEN
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
            AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.lock = j.lock AND e.status = 'todo' AND e.id < j.id AND e.run_at <= at)))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT room
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
            AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.lock = j.lock AND e.status = 'todo' AND e.id < j.id AND e.run_at <= at)))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT room
        FOR UPDATE OF j SKIP LOCKED
      ) c
      WHERE g.g IS NOT NULL
    )
    SELECT picked || coalesce(array_agg(c.id), '{}') INTO picked
    FROM (SELECT c.id FROM candidates c ORDER BY c.priority DESC, c.run_at, c.id LIMIT room) c;
  END IF;

  RETURN QUERY
  UPDATE jobs j
  SET status = 'doing', attempts = j.attempts + 1, worker_id = claim_worker, started_at = at, updated_at = at
  WHERE j.id = ANY (picked)
  RETURNING j.id::text, j.task, j.queue, j.args, j.attempts, j.max_attempts, j.priority, j.lock,
            j.queueing_lock, j.group_key, (extract(epoch FROM j.run_at) * 1000)::float8,
            (extract(epoch FROM j.created_at) * 1000)::float8;
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

-- defer_job() and defer_jobs() take the group key, as a last parameter with a default so
-- callers that name or count the old ones keep working. unnest() of a NULL group_keys
-- array pads with NULLs. Otherwise unchanged from 023 and 022.
DROP FUNCTION defer_jobs(text[], jsonb[], text[], timestamptz[], integer[], text[], text[], integer[], text[]);
DROP FUNCTION defer_job(text, jsonb, text, timestamptz, integer, text, text, integer, text);

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
BEGIN
  IF defer_job.task IS NULL OR defer_job.task = '' THEN
    RAISE EXCEPTION 'defer_job: task is required' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF defer_job.on_conflict IS NULL OR defer_job.on_conflict NOT IN ('error', 'ignore') THEN
    RAISE EXCEPTION 'defer_job: on_conflict % is invalid: expected ''error'' or ''ignore''', defer_job.on_conflict
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF defer_job.queue IS NULL OR defer_job.priority IS NULL OR defer_job.max_attempts IS NULL THEN
    SELECT * INTO known FROM tasks t WHERE t.name = defer_job.task;
  END IF;
  IF defer_job.queueing_lock IS NULL THEN
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

-- job_states shows group_key: j.* was expanded when the view was created, and the new
-- column comes before `state`, which CREATE OR REPLACE VIEW cannot do.
DROP VIEW job_states;
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
