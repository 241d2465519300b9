/**
 * The dashboard end to end: the page in real headless Chromium (actions refused without
 * the token, done with it, errors rendered as text), /metrics as Prometheus text that
 * reflects the seeded state and the worker's outcomes, and the JSON API's 400s.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { type AdminServer, startAdminServer } from '../../src/admin/server.js';
import { isolatedApp, type TestApp } from '../helpers.js';
import { CHROMIUM, CHROMIUM_ARGS } from './chromium.js';
import { type Seeded, seedDashboard, XSS_ERROR } from './seed.js';

const TOKEN = 'test-token-5c1f0e9a';
const noChromium = fs.existsSync(CHROMIUM)
  ? false
  : `chromium not found at ${CHROMIUM} (install Debian's chromium package; .ci/run does)`;

/** What the user reads in an element (textContent: no layout-dependent innerText). */
const text = async (locator: { textContent(): Promise<string | null> }) =>
  (await locator.textContent()) ?? '';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A small Prometheus text-format (0.0.4) parser: throws on any line it does not understand. */
function parsePrometheus(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
  const sampleLine = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: -?\\d+)?$`);
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gy;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('# HELP ')) {
      assert.match(line, new RegExp(`^# HELP ${NAME} .*$`));
      continue;
    }
    if (line.startsWith('# TYPE ')) {
      const m = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`).exec(line);
      assert.ok(m, `bad TYPE line: ${line}`);
      types.set(m[1]!, m[2]!);
      continue;
    }
    const m = sampleLine.exec(line);
    assert.ok(m, `not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[2]) {
      label.lastIndex = 0;
      let consumed = 0;
      for (let l = label.exec(m[2]); l; l = label.exec(m[2])) {
        labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
        consumed = label.lastIndex;
      }
      assert.equal(consumed, m[2].length, `bad labels in: ${line}`);
    }
    const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
    assert.ok(m[3] === 'NaN' || !Number.isNaN(value), `bad value in: ${line}`);
    samples.push({ name: m[1]!, labels, value });
  }
  return { samples, types };
}

function sample(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    ?.value;
}

describe('dashboard', () => {
  let t: TestApp;
  let seeded: Seeded;
  let server: AdminServer;
  let tokenless: AdminServer;
  const status = async (id: string) =>
    (await t.pool.query<{ status: string }>(`SELECT status FROM "${t.schema}".jobs WHERE id = $1`, [id]))
      .rows[0]?.status;

  before(async () => {
    t = await isolatedApp('admin');
    seeded = await seedDashboard(t.pool, t.schema);
    server = await startAdminServer({ app: t.app, port: 0, token: TOKEN });
    tokenless = await startAdminServer({ app: t.app, port: 0 });
  });
  after(async () => {
    await server?.close();
    await tokenless?.close();
    await t?.cleanup();
  });

  it('binds 127.0.0.1 by default and answers /healthz', async () => {
    assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    const response = await fetch(`${server.url}/healthz`);
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), { status: 'ok' });
  });

  it('the page in Chromium: failed job listed, retry refused without the token, done with it, <script> shown as text', {
    skip: noChromium,
    timeout: 60_000,
  }, async () => {
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    try {
      const page = await browser.newPage();
      await page.goto(server.url);
      const failedRow = page.locator(`#failed-jobs tr[data-job-id="${seeded.failedId}"]`);
      await failedRow.waitFor();
      assert.match(await text(failedRow), /SMTP 550: mailbox unavailable/);
      assert.match(await text(failedRow), /5\/5/);

      // The error with markup is text: visible as typed, no <script> element from it, nothing ran.
      const xssRow = page.locator(`#failed-jobs tr[data-job-id="${seeded.xssId}"]`);
      assert.ok((await text(xssRow)).includes(XSS_ERROR));
      assert.equal(await xssRow.locator('script, b').count(), 0);
      assert.equal(await page.evaluate('typeof window.__xss'), 'undefined');
      assert.equal(await page.locator(`#dirty-jobs tr[data-job-id="${seeded.dirtyId}"]`).count(), 1);
      assert.match(await text(page.locator('#schedules tr.late')), /sync-crm/);
      assert.match(await text(page.locator('#processors')), /crm-export[\s\S]*failed/);

      // Without a token: refused, shown, and the job is still failed.
      await failedRow.locator('button[data-action="retry"]').click();
      await page.locator('#flash.error').waitFor();
      assert.match(await text(page.locator('#flash')), /Refused: .*token/);
      assert.equal(await status(seeded.failedId), 'failed');

      // With a wrong token: refused too.
      await page.fill('#token', 'not-the-token');
      await page.click('#save-token');
      await failedRow.locator('button[data-action="retry"]').click();
      await page.locator('#flash.error', { hasText: 'wrong' }).waitFor();
      assert.equal(await status(seeded.failedId), 'failed');

      // With the token: back to todo, audited as the dashboard.
      await page.fill('#token', TOKEN);
      await page.click('#save-token');
      await failedRow.locator('button[data-action="retry"]').click();
      await page.locator('#flash.ok').waitFor();
      assert.equal(await status(seeded.failedId), 'todo');
      await page.locator(`#failed-jobs tr[data-job-id="${seeded.failedId}"]`).waitFor({ state: 'detached' });
      const audit = await t.pool.query<{ actor: string; host: string }>(
        `SELECT actor, host FROM "${t.schema}".audit_log WHERE action = 'jobs.retry' AND subject = $1`,
        [`job:${seeded.failedId}`],
      );
      assert.equal(audit.rows.length, 1);
      assert.equal(audit.rows[0]!.actor, 'dashboard');
      assert.match(audit.rows[0]!.host, /127\.0\.0\.1/);
    } finally {
      await browser.close();
    }
  });

  it('actions: refused (403, says how to enable) when no token is configured, 401 without the header', async () => {
    const refused = await fetch(`${tokenless.url}/api/jobs/${seeded.xssId}/retry`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(refused.status, 403);
    assert.match(((await refused.json()) as { error: string }).error, /OUTBATCH_DASHBOARD_TOKEN/);
    const missing = await fetch(`${server.url}/api/processors/search-index/resume`, { method: 'POST' });
    assert.equal(missing.status, 401);
    assert.equal(await status(seeded.xssId), 'failed');
  });

  it('actions with the token: cancel a waiting job, pause and resume a processor (audited)', async () => {
    const post = (path: string) =>
      fetch(`${server.url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
    const cancelled = await post(`/api/jobs/${seeded.scheduledId}/cancel`);
    assert.equal(cancelled.status, 200);
    assert.deepEqual(await cancelled.json(), { done: [seeded.scheduledId], skipped: [] });
    assert.equal(await status(seeded.scheduledId), 'cancelled');
    const again = (await (await post(`/api/jobs/${seeded.scheduledId}/cancel`)).json()) as {
      skipped: { reason: string }[];
    };
    assert.match(again.skipped[0]!.reason, /cancelled/);
    assert.equal((await post('/api/processors/order-totals/pause')).status, 200);
    const paused = await t.pool.query(
      `SELECT 1 FROM "${t.schema}".processors WHERE name = 'order-totals' AND paused`,
    );
    assert.equal(paused.rowCount, 1);
    assert.equal((await post('/api/processors/order-totals/resume')).status, 200);
    const audit = await t.pool.query<{ action: string }>(
      `SELECT action FROM "${t.schema}".audit_log WHERE actor = 'dashboard' ORDER BY id`,
    );
    assert.ok(audit.rows.some((row) => row.action === 'processors.pause'));
    assert.ok(audit.rows.some((row) => row.action === 'jobs.cancel'));
  });

  it('retry of a failed job whose queueing lock already has a waiting job: skipped, the reason names the lock and the waiting job', async () => {
    const { rows } = await t.pool.query<{ id: string }>(
      `INSERT INTO "${t.schema}".jobs (task, queueing_lock, status) VALUES ('sync', 'sync:7', 'failed'), ('sync', 'sync:7', 'todo')
       RETURNING id::text`,
    );
    const [failed, waiting] = rows.map((r) => r.id);
    try {
      const response = await fetch(`${server.url}/api/jobs/${failed}/retry`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKEN}` },
      });
      assert.equal(response.status, 200);
      assert.deepEqual(await response.json(), {
        done: [],
        skipped: [{ id: failed, reason: `queueing lock "sync:7" already has a waiting job ${waiting}` }],
      });
      assert.equal(await status(failed!), 'failed');
    } finally {
      // The /metrics test below counts the seeded failed jobs.
      await t.pool.query(`DELETE FROM "${t.schema}".jobs WHERE queueing_lock = 'sync:7'`);
    }
  });

  it('the JSON API rejects bad parameters with 400 and a message naming them', async () => {
    const cases: [string, RegExp][] = [
      ['/api/jobs', /state is required/],
      ['/api/jobs?state=bogus', /state "bogus" is invalid/],
      ['/api/jobs?state=failed&limit=0', /limit "0" is invalid/],
      ['/api/jobs?state=failed&limit=201', /limit "201" is invalid: expected an integer from 1 to 200/],
      ['/api/jobs?state=failed&limit=ten', /limit "ten" is invalid/],
      ['/api/jobs?state=failed&before=abc', /job id "abc" is invalid/],
      ['/api/jobs?state=failed&sort=id', /unknown parameter "sort"/],
      ['/api/jobs?state=failed&state=todo', /"state" is given twice/],
      ['/api/jobs/abc', /job id "abc" is invalid/],
      ['/api/throughput?minutes=0', /minutes "0" is invalid/],
      ['/api/overview?x=1', /unknown parameter "x"/],
    ];
    for (const [path, message] of cases) {
      const response = await fetch(`${server.url}${path}`);
      assert.equal(response.status, 400, path);
      assert.match(((await response.json()) as { error: string }).error, message, path);
    }
    const unknown = await fetch(`${server.url}/api/nope`);
    assert.equal(unknown.status, 404);
    assert.match(((await unknown.json()) as { error: string }).error, /no route GET \/api\/nope/);
    assert.equal((await fetch(`${server.url}/api/jobs/${seeded.todoId}/retry`)).status, 405);
    assert.equal((await fetch(`${server.url}/api/jobs/999999`)).status, 404);
    const bad = await fetch(`${server.url}/api/jobs/abc/delete`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(bad.status, 400);
  });

  it('lists are keyset pages, newest first', async () => {
    // Ids 9 and 10 and beyond: numeric order, not text order ("9" > "10").
    for (let i = 0; i < 12; i++) await t.app.defer('page-me', { i }, { queue: 'paging' });
    const page = async (query: string) =>
      (await (await fetch(`${server.url}/api/jobs?${query}`)).json()) as {
        jobs: { id: string }[];
        next: string | null;
      };
    const first = await page('state=todo&queue=paging&limit=1');
    assert.equal(first.jobs.length, 1);
    assert.ok(first.next);
    const second = await page(`state=todo&queue=paging&limit=1&before=${first.next}`);
    assert.ok(BigInt(second.jobs[0]!.id) < BigInt(first.jobs[0]!.id));
    const all = await page('state=todo&limit=200');
    assert.ok(all.jobs.length >= 12);
    assert.equal(all.next, null);
    assert.deepEqual(
      all.jobs.map((j) => j.id),
      [...all.jobs.map((j) => j.id)].sort((a, b) => Number(b) - Number(a)),
    );
  });

  it('/metrics parses as Prometheus text and reflects the seeded state', async () => {
    // The seeded live worker stays live however long the tests above took.
    await t.pool.query(`UPDATE "${t.schema}".workers SET last_seen_at = now() WHERE host = 'worker-a'`);
    // A transaction holding an xid, open while we scrape.
    const holder: pg.PoolClient = await t.pool.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT pg_current_xact_id()');
      await holder.query(`SELECT pg_sleep(0.2)`);
      const response = await fetch(`${server.url}/metrics`);
      assert.equal(response.status, 200);
      assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
      const { samples, types } = parsePrometheus(await response.text());
      assert.equal(types.get('outbatch_jobs'), 'gauge');
      assert.equal(types.get('outbatch_job_duration_seconds'), 'histogram');
      assert.equal(types.get('outbatch_events_appended_total'), 'counter');
      // Seeded: emails has one failed (retried by the browser test, if it ran) and one dirty in media.
      assert.equal(sample(samples, 'outbatch_jobs', { state: 'failed', queue: 'default' }), 1);
      assert.equal(sample(samples, 'outbatch_jobs', { state: 'dirty', queue: 'media' }), 1);
      assert.equal(sample(samples, 'outbatch_jobs', { state: 'doing', queue: 'emails' }), 1);
      assert.equal(sample(samples, 'outbatch_workers_alive'), 1);
      assert.equal(sample(samples, 'outbatch_events_head_position'), 30);
      assert.equal(sample(samples, 'outbatch_events_appended_total'), 30);
      // The partitioned log: events_from_1 and two ahead, the default one, nothing archived.
      assert.equal(sample(samples, 'outbatch_events_partitions'), 4);
      assert.equal(sample(samples, 'outbatch_events_overflow'), 0);
      assert.equal(sample(samples, 'outbatch_events_archived_through_position'), 0);
      assert.ok(sample(samples, 'outbatch_events_log_bytes')! > 0);
      assert.equal(
        sample(samples, 'outbatch_processor_failed', { processor: 'crm-export', version: '1' }),
        1,
      );
      assert.equal(
        sample(samples, 'outbatch_processor_paused', { processor: 'search-index', version: '1' }),
        1,
      );
      assert.equal(sample(samples, 'outbatch_processor_lag_events', { processor: 'order-totals' }), 0);
      assert.ok(sample(samples, 'outbatch_processor_lag_events', { processor: 'search-index' })! > 0);
      assert.equal(sample(samples, 'outbatch_schedule_late', { schedule: 'sync-crm' }), 1);
      assert.equal(sample(samples, 'outbatch_schedule_late', { schedule: 'nightly-report' }), 0);
      assert.ok(sample(samples, 'outbatch_schedule_lateness_seconds', { schedule: 'sync-crm' })! > 60);
      assert.ok(sample(samples, 'outbatch_oldest_transaction_age_seconds')! >= 0.2);

      const oldest = (await (await fetch(`${server.url}/api/transactions/oldest`)).json()) as {
        oldestTransaction: { pid: number } | null;
      };
      assert.ok(oldest.oldestTransaction);
    } finally {
      await holder.query('ROLLBACK');
      holder.release();
    }
  });

  it('overview: counts by state, queue and task, workers, schedules and an hour of throughput', async () => {
    const o = (await (await fetch(`${server.url}/api/overview`)).json()) as {
      jobs: { counts: { state: string; queue: string; task: string; count: number; estimated: boolean }[] };
      workers: { alive: boolean }[];
      schedules: { name: string; late: boolean; nextTick: string }[];
      throughput: { succeeded: number }[];
      events: { headPosition: string };
      eventLog: {
        layout: string;
        partitions: { name: string; lower: string | null }[];
        archivedThrough: null;
      };
    };
    assert.equal(o.eventLog.layout, 'partitioned');
    assert.deepEqual(
      o.eventLog.partitions.map((p) => [p.name, p.lower]),
      [
        ['events_from_1', '1'],
        ['events_from_10000000', '10000000'],
        ['events_from_20000000', '20000000'],
        ['events_overflow', null],
      ],
    );
    assert.equal(o.eventLog.archivedThrough, null);
    const dirty = o.jobs.counts.find((c) => c.state === 'dirty');
    assert.deepEqual(dirty, {
      state: 'dirty',
      queue: 'media',
      task: 'resize-image',
      count: 1,
      estimated: false,
    });
    assert.equal(o.workers.filter((w) => w.alive).length, 1);
    assert.equal(o.throughput.length, 60);
    assert.ok(o.throughput.every((m) => m.succeeded > 0));
    assert.ok(o.schedules.every((s) => Date.parse(s.nextTick) > Date.now()));
    assert.equal(o.events.headPosition, '30');
  });

  // Last: a real worker also recovers the seeded dirty job, which the tests above count.
  it('the worker hook feeds the job counters and the duration histogram', async () => {
    // A worker run through the hook: one job succeeds, one fails for good.
    const ok = t.app.task('metrics-ok', { queue: 'metrics' }, async () => {});
    const bad = t.app.task('metrics-bad', { queue: 'metrics', retry: { attempts: 1 } }, async () => {
      throw new Error('nope');
    });
    await ok.defer({});
    await bad.defer({});
    const controller = new AbortController();
    const running = t.app.run({
      queues: ['metrics'],
      signal: controller.signal,
      pollInterval: 50,
      onJobFinished: server.metrics.observeJob,
    });
    const settled = async () => {
      for (;;) {
        const left = await t.pool.query(
          `SELECT 1 FROM "${t.schema}".jobs WHERE queue = 'metrics' AND status <> 'failed'`,
        );
        if (left.rowCount === 0) return;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    };
    await settled();
    controller.abort();
    await running;

    const { samples } = parsePrometheus(await (await fetch(`${server.url}/metrics`)).text());
    assert.equal(sample(samples, 'outbatch_jobs', { state: 'failed', queue: 'metrics' }), 1);
    assert.equal(sample(samples, 'outbatch_jobs_completed_total', { task: 'metrics-ok' }), 1);
    assert.equal(sample(samples, 'outbatch_jobs_failed_total', { task: 'metrics-bad' }), 1);
    assert.equal(sample(samples, 'outbatch_jobs_retried_total', { task: 'metrics-bad' }), undefined);
    assert.equal(sample(samples, 'outbatch_job_duration_seconds_count', { task: 'metrics-ok' }), 1);
    assert.equal(
      sample(samples, 'outbatch_job_duration_seconds_bucket', { task: 'metrics-ok', le: '+Inf' }),
      1,
    );
  });
});
