/**
 * The counts every scenario ends with: jobs (done once, re-run only when disturbed),
 * events (acknowledged batches stored once and whole, failed ones absent or whole) and
 * the revenue projection (equal to the aggregation of the events table).
 */
import type pg from 'pg';
import { createApp, createLogger } from '../../src/index.js';
import type { AppenderReport } from './support.js';
import { databaseUrl, waitFor } from './support.js';

/** Defers `count` jobs alternating chaos-tx / chaos-plain (or only `mode`), in chunks of 1000; records their ids. */
export async function deferJobs(
  pool: pg.Pool,
  schema: string,
  count: number,
  modes: Array<'tx' | 'plain'> = ['tx', 'plain'],
): Promise<void> {
  const app = createApp({ databaseUrl: databaseUrl(), schema, logger: createLogger({ level: 'silent' }) });
  const tasks = { tx: app.task('chaos-tx', {}, () => {}), plain: app.task('chaos-plain', {}, () => {}) };
  try {
    for (let done = 0; done < count; ) {
      const size = Math.min(1_000, count - done);
      for (const mode of modes) {
        const share = Math.ceil(size / modes.length);
        const results = await tasks[mode].deferMany(Array.from({ length: share }, () => ({ args: {} })));
        const ids = results.map((r) => (r.enqueued ? r.id : r.existingId));
        await pool.query(`INSERT INTO "${schema}".deferred (job_id, mode) SELECT unnest($1::bigint[]), $2`, [
          ids,
          mode,
        ]);
        done += share;
      }
    }
  } finally {
    await app.close();
  }
}

export async function createDeferredTable(pool: pg.Pool, schema: string): Promise<void> {
  await pool.query(`
    CREATE TABLE "${schema}".deferred (job_id bigint PRIMARY KEY, mode text NOT NULL);
    CREATE TABLE "${schema}".disturbed (pid int NOT NULL, how text NOT NULL, at timestamptz NOT NULL DEFAULT now());`);
}

/** Jobs not finished yet (todo or doing), to wait on. */
export async function jobsLeft(pool: pg.Pool, schema: string): Promise<number> {
  const { rows } = await pool.query(
    `SELECT count(*)::int AS n FROM "${schema}".jobs WHERE status IN ('todo', 'doing') AND task LIKE 'chaos-%'`,
  );
  return rows[0].n;
}

export interface JobCounts {
  deferred: number;
  completed: number;
  missing: number;
  doing: number;
  todo: number;
  failed: number;
  handlerRuns: number;
  jobsRunMoreThanOnce: number;
  extraRuns: number;
  /** Re-runs where an earlier run was on a process that was neither disturbed nor seen stalled. */
  unexplainedReruns: number;
  jobsWithAttemptsAbove1: number;
  /** Earlier runs of re-run jobs by `fate/mode`: what happened to their process (killed, paused, stalled, killed+paused, undisturbed) and the task's mode (tx, plain). */
  rerunsAfter: Record<string, number>;
  duplicates: { tx: number; plain: number };
  failedErrors: string[];
}

export async function countJobs(pool: pg.Pool, schema: string): Promise<JobCounts> {
  const s = `"${schema}"`;
  const { rows } = await pool.query(`
    WITH res AS (SELECT job_id, mode, count(*) AS n FROM ${s}.results GROUP BY 1, 2),
         runs AS (SELECT job_id, count(*) AS n, max(attempt) AS max_attempt FROM ${s}.runs GROUP BY 1),
         earlier AS (
           SELECT r.job_id, r.pid FROM ${s}.runs r
           WHERE r.attempt < (SELECT max(attempt) FROM ${s}.runs x WHERE x.job_id = r.job_id))
    SELECT
      (SELECT count(*) FROM ${s}.deferred)::int AS deferred,
      (SELECT count(*) FROM ${s}.deferred d WHERE EXISTS (SELECT 1 FROM res WHERE res.job_id = d.job_id))::int AS completed,
      (SELECT count(*) FROM ${s}.deferred d WHERE NOT EXISTS (SELECT 1 FROM res WHERE res.job_id = d.job_id))::int AS missing,
      (SELECT count(*) FROM ${s}.jobs WHERE status = 'doing' AND task LIKE 'chaos-%')::int AS doing,
      (SELECT count(*) FROM ${s}.jobs WHERE status = 'todo' AND task LIKE 'chaos-%')::int AS todo,
      (SELECT count(*) FROM ${s}.jobs WHERE status = 'failed' AND task LIKE 'chaos-%')::int AS failed,
      (SELECT count(*) FROM ${s}.runs)::int AS "handlerRuns",
      (SELECT count(*) FROM runs WHERE n > 1)::int AS "jobsRunMoreThanOnce",
      (SELECT coalesce(sum(n - 1), 0) FROM runs)::int AS "extraRuns",
      (SELECT count(DISTINCT e.job_id) FROM earlier e
        WHERE NOT EXISTS (SELECT 1 FROM ${s}.disturbed k WHERE k.pid = e.pid))::int AS "unexplainedReruns",
      (SELECT count(*) FROM runs WHERE max_attempt > 1)::int AS "jobsWithAttemptsAbove1",
      (SELECT coalesce(jsonb_object_agg(how, n), '{}') FROM (
         SELECT coalesce(k.how, 'undisturbed') || '/' || d.mode AS how, count(*)::int AS n FROM earlier e
         JOIN ${s}.deferred d ON d.job_id = e.job_id
         LEFT JOIN (SELECT pid, string_agg(DISTINCT how, '+' ORDER BY how) AS how FROM ${s}.disturbed GROUP BY pid) k
           ON k.pid = e.pid
         GROUP BY 1) x) AS "rerunsAfter",
      (SELECT count(*) FROM res WHERE mode = 'tx' AND n > 1)::int AS "dupTx",
      (SELECT count(*) FROM res WHERE mode = 'plain' AND n > 1)::int AS "dupPlain",
      (SELECT coalesce(array_agg(DISTINCT last_error->>'message'), '{}') FROM (
         SELECT last_error FROM ${s}.jobs WHERE status = 'failed' AND task LIKE 'chaos-%' LIMIT 50) f) AS "failedErrors"`);
  const row = rows[0];
  return {
    deferred: row.deferred,
    completed: row.completed,
    missing: row.missing,
    doing: row.doing,
    todo: row.todo,
    failed: row.failed,
    handlerRuns: row.handlerRuns,
    jobsRunMoreThanOnce: row.jobsRunMoreThanOnce,
    extraRuns: row.extraRuns,
    unexplainedReruns: row.unexplainedReruns,
    jobsWithAttemptsAbove1: row.jobsWithAttemptsAbove1,
    rerunsAfter: row.rerunsAfter,
    duplicates: { tx: row.dupTx, plain: row.dupPlain },
    failedErrors: row.failedErrors,
  };
}

export interface EventCounts {
  stored: number;
  batchesAcked: number;
  ackedMissing: number;
  partial: number;
  erroredAbsent: number;
  erroredCommitted: number;
  unexpected: number;
}

/** Every acknowledged batch stored exactly once and whole; every errored one absent or whole. */
export async function countEvents(
  pool: pg.Pool,
  schema: string,
  reports: AppenderReport[],
): Promise<EventCounts> {
  const { rows } = await pool.query<{ batch: string; n: number }>(
    `SELECT data->>'batch' AS batch, count(*)::int AS n FROM "${schema}".events GROUP BY 1`,
  );
  const stored = new Map(rows.map((row) => [row.batch, row.n]));
  const counts: EventCounts = {
    stored: rows.reduce((sum, row) => sum + row.n, 0),
    batchesAcked: 0,
    ackedMissing: 0,
    partial: 0,
    erroredAbsent: 0,
    erroredCommitted: 0,
    unexpected: 0,
  };
  for (const report of reports) {
    const errored = new Set(report.errored);
    for (let batch = 0; batch < report.batches; batch++) {
      const key = `${report.appender}:${batch}`;
      const n = stored.get(key) ?? 0;
      stored.delete(key);
      if (n !== 0 && n !== report.batchSize) counts.partial += 1;
      if (errored.has(batch)) {
        if (n === 0) counts.erroredAbsent += 1;
        else if (n === report.batchSize) counts.erroredCommitted += 1;
      } else {
        counts.batchesAcked += 1;
        if (n !== report.batchSize) counts.ackedMissing += 1;
      }
    }
  }
  counts.unexpected = stored.size;
  return counts;
}

/** Waits for the projection to catch up, then compares it with the aggregation of the events table. */
export async function checkProjection(pool: pg.Pool, schema: string, shop: string, timeoutMs: number) {
  const app = createApp({ databaseUrl: databaseUrl(), schema, logger: createLogger({ level: 'silent' }) });
  try {
    const { rows: total } = await pool.query(`SELECT count(*)::int AS n FROM "${schema}".events`);
    await waitFor(
      'the projection to catch up',
      async () => {
        const [status] = await app.processors.status('revenue-by-customer-day');
        return status && status.lagEvents === 0 && status.state !== 'running';
      },
      timeoutMs,
      500,
    );
    const [status] = await app.processors.status('revenue-by-customer-day');
    const { rows: diff } = await pool.query(`
      WITH want AS (
        SELECT data->>'customerId' AS customer, (recorded_at AT TIME ZONE 'UTC')::date AS day,
               sum(CASE type WHEN 'OrderRefunded' THEN -1 ELSE 1 END)::int AS orders,
               sum(CASE type WHEN 'OrderRefunded' THEN -1 ELSE 1 END * (data->>'amountCents')::bigint)::bigint AS amount
        FROM "${schema}".events GROUP BY 1, 2),
      got AS (
        SELECT customer, day, orders, amount_cents AS amount FROM "${shop}".revenue
        WHERE version = 1 AND (orders <> 0 OR amount_cents <> 0))
      SELECT (SELECT count(*) FROM want)::int AS rows,
             (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT * FROM got) a)::int AS "missingOrWrong",
             (SELECT count(*) FROM (SELECT * FROM got EXCEPT SELECT * FROM want) b)::int AS extra`);
    return {
      events: total[0].n as number,
      eventsProcessed: Number(status?.eventsProcessed ?? -1),
      state: status?.state,
      rows: diff[0].rows as number,
      missingOrWrong: diff[0].missingOrWrong as number,
      extra: diff[0].extra as number,
    };
  } finally {
    await app.close();
  }
}

export interface KeptTaskCounts {
  task: string;
  total: number;
  succeeded: number;
  failed: number;
  todo: number;
  doing: number;
  /** Failed with their attempts spent (attempts >= max_attempts). */
  spent: number;
  /** Failed as superseded by a waiting job with the same queueing lock. */
  superseded: number;
  /** Failed jobs whose last_error has no non-empty text message. */
  unreadable: number;
  /** Failed jobs whose last message still holds the task's name (the poison handlers' own text). */
  ownText: number;
  /** Failed by recovery (`stalled` in last_error): their worker looked dead, not their handler's error. */
  byRecovery: number;
  maxAttempts: number;
  /** Largest last_error and errors (all attempts) as stored, in bytes. */
  lastErrorBytes: number;
  errorsBytes: number;
  /** A few distinct last messages, cut at 160 characters. */
  messages: string[];
}

/**
 * Per task, the end state of jobs whose rows are kept (`keepSucceededFor`): what finished
 * how, and whether the failures left readable text behind.
 */
export async function countKeptJobs(
  pool: pg.Pool,
  schema: string,
  tasks: string[],
): Promise<KeptTaskCounts[]> {
  const { rows } = await pool.query(
    `SELECT t.task,
            count(j.id)::int AS total,
            count(*) FILTER (WHERE j.status = 'succeeded')::int AS succeeded,
            count(*) FILTER (WHERE j.status = 'failed')::int AS failed,
            count(*) FILTER (WHERE j.status = 'todo')::int AS todo,
            count(*) FILTER (WHERE j.status = 'doing')::int AS doing,
            count(*) FILTER (WHERE j.status = 'failed' AND j.attempts >= j.max_attempts)::int AS spent,
            count(*) FILTER (WHERE j.status = 'failed' AND j.last_error ? 'supersededBy')::int AS superseded,
            count(*) FILTER (WHERE j.status = 'failed' AND (jsonb_typeof(j.last_error -> 'message') IS DISTINCT FROM 'string'
                                                           OR j.last_error ->> 'message' = ''))::int AS unreadable,
            count(*) FILTER (WHERE j.status = 'failed' AND strpos(j.last_error ->> 'message', j.task) > 0)::int AS "ownText",
            count(*) FILTER (WHERE j.status = 'failed' AND j.last_error @> '{"stalled": true}')::int AS "byRecovery",
            coalesce(max(j.attempts), 0)::int AS "maxAttempts",
            coalesce(max(octet_length(j.last_error::text)), 0)::int AS "lastErrorBytes",
            coalesce(max(octet_length(j.errors::text)), 0)::int AS "errorsBytes",
            coalesce((SELECT array_agg(m) FROM (
               SELECT DISTINCT left(x.last_error ->> 'message', 160) AS m FROM "${schema}".jobs x
               WHERE x.task = t.task AND x.status = 'failed' LIMIT 4) d), '{}') AS messages
     FROM unnest($1::text[]) AS t(task)
     LEFT JOIN "${schema}".jobs j ON j.task = t.task
     GROUP BY t.task ORDER BY t.task`,
    [tasks],
  );
  return rows;
}

/**
 * Queueing-lock pairs (`locked-pair`): how many exist, how many lost both jobs to the dead
 * letter, and how many failed their first attempts on one worker within 50 ms of each other
 * (so most likely written back in one batch: the moment the pair is there to test).
 */
export async function countLockedPairs(pool: pg.Pool, schema: string) {
  const { rows } = await pool.query(
    `SELECT count(*)::int AS pairs,
            count(*) FILTER (WHERE jobs = 2)::int AS "withPartner",
            count(*) FILTER (WHERE succeeded = 0 AND todo_doing = 0)::int AS "noneSucceeded",
            count(*) FILTER (WHERE jobs = 2 AND workers = 1 AND spread_ms < 50)::int AS "failedTogether"
     FROM (SELECT args ->> 'pair' AS pair, count(*) AS jobs,
                  count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                  count(*) FILTER (WHERE status IN ('todo', 'doing')) AS todo_doing,
                  count(DISTINCT errors -> 0 ->> 'worker') AS workers,
                  extract(epoch FROM max((errors -> 0 ->> 'at')::timestamptz) - min((errors -> 0 ->> 'at')::timestamptz)) * 1000 AS spread_ms
           FROM "${schema}".jobs WHERE task = 'locked-pair' GROUP BY 1) p`,
  );
  return rows[0] as { pairs: number; withPartner: number; noneSucceeded: number; failedTogether: number };
}

/** Every event against the rows a processor wrote for it (`processed (position)`, no unique key). */
export async function countProcessed(pool: pg.Pool, schema: string) {
  const s = `"${schema}"`;
  const { rows } = await pool.query(`
    WITH p AS (SELECT position, count(*) AS n FROM ${s}.processed GROUP BY 1)
    SELECT (SELECT count(*) FROM ${s}.events)::int AS events,
           (SELECT count(*) FROM ${s}.processed)::int AS rows,
           (SELECT count(*) FROM ${s}.events e WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.position = e.position))::int AS missing,
           (SELECT count(*) FROM p WHERE n > 1)::int AS duplicated,
           (SELECT count(*) FROM p WHERE NOT EXISTS (SELECT 1 FROM ${s}.events e WHERE e.position = p.position))::int AS extra`);
  return rows[0] as { events: number; rows: number; missing: number; duplicated: number; extra: number };
}
