/**
 * Jobs no live worker knows (migration 024's workers.tasks): a live worker that lists
 * only task a leaves b's jobs stranded; the library, the API, the page and the metric
 * outbatch_jobs_without_worker say so, and stop saying it once a worker knows b.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { type AdminServer, startAdminServer } from '../../src/admin/server.js';
import { isolatedApp, type TestApp } from '../helpers.js';
import { CHROMIUM, CHROMIUM_ARGS } from './chromium.js';

const noChromium = fs.existsSync(CHROMIUM) ? false : `chromium not found at ${CHROMIUM}`;

/** The value of one sample of a Prometheus text scrape, or undefined when absent. */
function metric(text: string, name: string, task: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{task="${task}"} `));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

describe('jobs no live worker knows', () => {
  let t: TestApp;
  let server: AdminServer;
  const workers = (sql: string) =>
    t.pool.query(
      `INSERT INTO "${t.schema}".workers (id, host, pid, concurrency, stall_timeout_ms, last_seen_at, tasks) VALUES ${sql}`,
    );

  before(async () => {
    t = await isolatedApp('admin_without_worker');
    // Live and listing a; silent past its stall timeout, the one that knew b.
    await workers(
      `('w-a', 'h', 1, 1, 30000, now(), '{a}'), ('w-b', 'h', 2, 1, 30000, now() - interval '5 minutes', '{b}')`,
    );
    await t.app.defer('a', {});
    await t.app.defer('b', {});
    await t.app.defer('b', {});
    // Not due yet: not stranded yet.
    await t.app.defer('b', {}, { delay: { hours: 1 } });
    server = await startAdminServer({ app: t.app, port: 0 });
  });
  after(async () => {
    await server?.close();
    await t?.cleanup();
  });

  it('app.jobs: b has no live worker, a has one', async () => {
    assert.deepEqual(await t.app.jobs.withoutWorker(), [{ task: 'b', waiting: 2 }]);
    const stats = await t.app.jobs.stats();
    assert.equal(stats.find((s) => s.task === 'b')?.withoutWorker, 2);
    assert.equal(stats.find((s) => s.task === 'a')?.withoutWorker, 0);
  });

  it('the API and /metrics report b, not a', async () => {
    const overview = (await (await fetch(`${server.url}/api/overview`)).json()) as {
      withoutWorker: { task: string; waiting: number }[];
    };
    assert.deepEqual(overview.withoutWorker, [{ task: 'b', waiting: 2 }]);
    const text = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(text, /^# TYPE outbatch_jobs_without_worker gauge$/m);
    assert.equal(metric(text, 'outbatch_jobs_without_worker', 'b'), 2);
    assert.equal(metric(text, 'outbatch_jobs_without_worker', 'a'), undefined);
  });

  it('the page shows the task no live worker knows', { skip: noChromium, timeout: 60_000 }, async () => {
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    try {
      const page = await browser.newPage();
      await page.goto(server.url);
      const row = page.locator('#without-worker tr[data-task="b"]');
      await row.waitFor();
      assert.match((await row.textContent()) ?? '', /no live worker knows task b\s*2/);
      assert.equal(await page.locator('#without-worker tr[data-task="a"]').count(), 0);
      assert.match((await page.locator('[data-tile="jobs no worker knows"]').textContent()) ?? '', /^2/);
    } finally {
      await browser.close();
    }
  });

  it('a live worker that knows b, or an older one that claims every task, clears it (the metric goes to 0)', async () => {
    await workers(`('w-old', 'h', 3, 1, 30000, now(), NULL)`);
    assert.deepEqual(await t.app.jobs.withoutWorker(), []);
    const text = await (await fetch(`${server.url}/metrics`)).text();
    assert.equal(metric(text, 'outbatch_jobs_without_worker', 'b'), 0);
    await t.pool.query(`DELETE FROM "${t.schema}".workers WHERE id = 'w-old'`);
    await workers(`('w-b2', 'h', 4, 1, 30000, now(), '{b,c}')`);
    assert.deepEqual(await t.app.jobs.withoutWorker(), []);
  });
});
