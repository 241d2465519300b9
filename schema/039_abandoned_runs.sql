-- A running job cancelled (033), or past its timeout, left `doing` at once while its
-- handler, if it ignored ctx.signal, ran on: the next job of its queue, its group or its
-- lock started beside it, so a queue with concurrency 1 ran two at once (found by review,
-- pinned by test/jobs/limitsReview.test.ts) and a lock no longer serialised. Now such a
-- run is recorded in abandoned_runs until its handler has returned, and it keeps counting
-- against its queue's and its group's concurrency and holds its lock:
--   - a cancel of a `doing` job inserts the row in the statement that cancels it, so no
--     claim sees the slot free in between (src/jobs/operate.ts);
--   - a worker abandoning a handler at its timeout inserts the row before the attempt's
--     failure is written (src/worker/runJob.ts), so for a moment the run counts twice;
--   - the worker deletes the row when the handler returns, and its heartbeat deletes any of
--     its rows for runs it no longer has (a cancel it never heard of before the handler
--     returned); a dead worker's rows go with its recovery, a stopping worker's with it.
-- Rate limits count starts, not runs, and are unchanged. A handler that never returns holds
-- its slot and its lock until its worker stops (it logs which one).
--
-- claim_limited_jobs() also carries SET enable_sort = on: the worker's control connections
-- now run with sorts off where an index gives the order (src/db/connection.ts, `sort`), and
-- this function's plans were measured with them on.
--
-- claim_limited_jobs() is 038's but for the three places that count running jobs: the
-- queue's count, the groups' counts, and every lock check; the plain claim (src/jobs/claim.ts)
-- checks locks against abandoned_runs too. With no abandoned run each is one probe of an
-- empty index.
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

CREATE OR REPLACE FUNCTION claim_limited_jobs(
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
