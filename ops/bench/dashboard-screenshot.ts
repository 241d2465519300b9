/**
 * Takes docs/dashboard.png, the README's screenshot: a realistic state (the dashboard
 * test's seed, richer) in a scratch schema, the page in Debian's headless chromium.
 *
 *   DATABASE_URL=postgres://... npx tsx ops/bench/dashboard-screenshot.ts [--out docs/dashboard.png]
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { chromium } from 'playwright-core';
import { startAdminServer } from '../../src/admin/server.js';
import { createApp } from '../../src/app.js';
import { CHROMIUM_ARGS } from '../../test/admin/chromium.js';
import { seedDashboard } from '../../test/admin/seed.js';

const { values: flags } = parseArgs({ options: { out: { type: 'string', default: 'docs/dashboard.png' } } });
const url = process.env.DATABASE_URL;
if (!url) throw new Error('set DATABASE_URL to a PostgreSQL the screenshot may write a scratch schema into');

const schema = `dash_shot_${randomBytes(3).toString('hex')}`;
const app = createApp({ databaseUrl: url, schema });
const pool = new pg.Pool({ connectionString: url, max: 2 });
try {
  await app.migrate();
  await seedDashboard(pool, schema, { rich: true });
  const server = await startAdminServer({ app, port: 0, token: 'screenshot' });
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    await page.goto(server.url);
    await page.locator('#failed-jobs tr[data-job-id]').first().waitFor();
    // One stack open, to show what the collapsible holds.
    await page.locator('#failed-jobs details summary').first().click();
    await page.screenshot({ path: flags.out, fullPage: true });
    process.stdout.write(`wrote ${flags.out}\n`);
  } finally {
    await browser.close();
    await server.close();
  }
} finally {
  await app.close();
  await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await pool.end();
}
