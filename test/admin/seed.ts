/**
 * A realistic state for the dashboard, written with plain SQL into an isolated schema:
 * failed and dirty jobs with errors and stacks, waiting and scheduled jobs, a live and
 * a silent worker, an hour of per-minute outcomes, schedules (one late), processors
 * (one failed, one paused), and events. Shared by the dashboard test and the screenshot script.
 */
import type pg from 'pg';

export const XSS_ERROR = '<script>window.__xss = 1</script> unexpected token in "<b>customer</b>"';

export interface Seeded {
  failedId: string;
  xssId: string;
  dirtyId: string;
  todoId: string;
  scheduledId: string;
}

const stackOf = (message: string, fn: string) =>
  `Error: ${message}\n    at ${fn} (file:///app/dist/tasks/${fn}.js:42:11)\n    at async runHandler (file:///app/node_modules/outbatch/dist/worker/runJob.js:118:20)\n    at async Promise.all (index 0)`;

export async function seedDashboard(
  pool: pg.Pool,
  schema: string,
  options: { rich?: boolean } = {},
): Promise<Seeded> {
  const s = `"${schema}"`;
  const defer = async (task: string, queue: string, args: object, runAt = 'now()') => {
    const { rows } = await pool.query<{ id: string }>(
      `SELECT id::text FROM ${s}.defer_job($1, $2::jsonb, $3, ${runAt})`,
      [task, JSON.stringify(args), queue],
    );
    return rows[0]!.id;
  };
  const fail = async (id: string, message: string, fn: string, attempts = 5) => {
    const error = {
      message,
      stack: stackOf(message, fn),
      attempt: attempts,
      at: new Date().toISOString(),
      worker: 'api-7f9c:1:ab12cd',
    };
    await pool.query(
      `UPDATE ${s}.jobs SET status = 'failed', attempts = $2, max_attempts = $2, last_error = $3::jsonb,
              errors = jsonb_build_array($3::jsonb), finished_at = now(), updated_at = now(),
              created_at = now() - interval '47 minutes'
       WHERE id = $1`,
      [id, attempts, JSON.stringify(error)],
    );
  };

  // Workers: one alive, one silent past its stall timeout (its running job is dirty).
  await pool.query(
    `INSERT INTO ${s}.workers (id, host, pid, queues, concurrency, stall_timeout_ms, started_at, last_seen_at) VALUES
       ('worker-a:4211:9f3e1c', 'worker-a', 4211, NULL, 10, 30000, now() - interval '3 hours', now() - interval '2 seconds'),
       ('worker-b:977:c0ffee', 'worker-b', 977, '{emails}', 4, 30000, now() - interval '5 hours', now() - interval '11 minutes')`,
  );

  const failedId = await defer('send-email', 'emails', { to: 'ana@example.com', template: 'receipt' });
  await fail(failedId, 'SMTP 550: mailbox unavailable for ana@example.com', 'sendEmail');
  const xssId = await defer('import-csv', 'default', { file: 'customers.csv' });
  await fail(xssId, XSS_ERROR, 'importCsv', 3);

  const dirtyId = await defer('resize-image', 'media', { image: 'img_8812.png' });
  await pool.query(
    `UPDATE ${s}.jobs SET status = 'doing', attempts = 1, worker_id = 'worker-b:977:c0ffee',
            started_at = now() - interval '12 minutes', updated_at = now() - interval '12 minutes',
            created_at = now() - interval '13 minutes' WHERE id = $1`,
    [dirtyId],
  );
  const runningId = await defer('send-email', 'emails', { to: 'li@example.com' });
  await pool.query(
    `UPDATE ${s}.jobs SET status = 'doing', attempts = 1, worker_id = 'worker-a:4211:9f3e1c', started_at = now() WHERE id = $1`,
    [runningId],
  );
  const todoId = await defer('send-email', 'emails', { to: 'bo@example.com' });
  const scheduledId = await defer(
    'nightly-report',
    'reports',
    { day: 'yesterday' },
    "now() + interval '6 hours'",
  );

  // An hour of outcomes per minute, with a burst of failures twenty minutes ago, and two
  // minutes more at each end: the hour the API reads may start a minute or two later.
  await pool.query(
    `INSERT INTO ${s}.task_stats (task, minute, succeeded, retried, failed, duration_ms_sum, duration_ms_max)
     SELECT t.task, date_trunc('minute', now()) - m * interval '1 minute',
            (t.base + 40 * sin(a / 6.0) + (a * 7 % 13))::int,
            CASE WHEN a BETWEEN 18 AND 23 THEN 25 + a % 5 ELSE a % 4 END,
            CASE WHEN a BETWEEN 19 AND 21 THEN 6 WHEN a % 17 = 0 THEN 1 ELSE 0 END,
            t.base * 38.5, 410
     FROM generate_series(-2, 61) AS m, abs(m) AS a, (VALUES ('send-email', 140), ('resize-image', 60)) AS t(task, base)`,
  );

  // Schedules: one on time, one whose tick is 9 minutes overdue.
  await pool.query(
    `INSERT INTO ${s}.schedules (name, kind, expression, timezone, task, first_seen_at, last_seen_at, last_tick, last_enqueued_at) VALUES
       ('nightly-report', 'cron', '0 3 * * *', 'Europe/Paris', 'nightly-report', now() - interval '30 days', now(),
        date_trunc('day', now()) + interval '2 hours', date_trunc('day', now()) + interval '2 hours 1 second'),
       ('sync-crm', 'every', 'PT5M', 'UTC', 'sync-crm', now() - interval '30 days', now() - interval '9 minutes',
        to_timestamp(floor(extract(epoch FROM now()) / 300) * 300 - 600), now() - interval '14 minutes')`,
  );
  await pool.query(
    `INSERT INTO ${s}.schedule_ticks (schedule, tick, job_id, enqueued_at, late_ms)
     SELECT name, last_tick, CASE WHEN name = 'nightly-report' THEN 999999 END, last_enqueued_at, 400 FROM ${s}.schedules`,
  );

  // Events and processors: one caught up, one paused, one halted on a poison event.
  await pool.query(
    `INSERT INTO ${s}.events (stream, stream_version, type, data, recorded_at)
     SELECT 'order-' || (i / 3), i % 3 + 1, (ARRAY['OrderPlaced', 'OrderPaid', 'OrderShipped'])[i % 3 + 1],
            jsonb_build_object('total', i), now() - (300 - i) * interval '1 second'
     FROM generate_series(0, ${options.rich ? 2999 : 29}) AS i`,
  );
  await pool.query(
    `INSERT INTO ${s}.processors (name, version, active, types, checkpoint_tx, checkpoint_position, paused,
                                  failed_at, failed_position, last_error, events_processed, last_run_at)
     SELECT 'order-totals', 1, true, '{OrderPlaced,OrderPaid}'::text[],
            (SELECT tx_id FROM ${s}.events ORDER BY tx_id DESC LIMIT 1), max(position), false, NULL::timestamptz, NULL::bigint, NULL::text,
            count(*), now() - interval '3 seconds' FROM ${s}.events
     UNION ALL
     SELECT 'search-index', 1, true, NULL, '0'::xid8, 0, true, NULL::timestamptz, NULL::bigint, NULL::text, 0, now() - interval '2 hours'
     UNION ALL
     SELECT 'crm-export', 1, true, '{OrderShipped}', (SELECT tx_id FROM ${s}.events ORDER BY tx_id LIMIT 1),
            min(position), false, now() - interval '4 minutes',
            min(position) + 2, 'crm-export: HTTP 422 {"error":"<invalid> customer id"}', 0, now() - interval '4 minutes'
     FROM ${s}.events`,
  );
  if (options.rich) {
    for (let i = 0; i < 4; i++) await defer('send-email', 'emails', { to: `user${i}@example.com` });
    await pool.query(
      `UPDATE ${s}.jobs SET created_at = now() - (id * 17) * interval '1 second' WHERE status = 'todo'`,
    );
    for (let i = 0; i < 3; i++) await defer('resize-image', 'media', { image: `img_${i}.png` });
    await pool.query(
      `UPDATE ${s}.jobs SET created_at = now() - (id * 17) * interval '1 second' WHERE status = 'todo'`,
    );
    const more = await defer('charge-card', 'payments', { order: 'A-1042' });
    await fail(more, 'card_declined: insufficient funds (order A-1042)', 'chargeCard');
  }
  return { failedId, xssId, dirtyId, todoId, scheduledId };
}
