// @smoke
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import pg from 'pg';
import { databaseUrl, runCli, uniqueSchema } from './helpers.js';

const schema = uniqueSchema('demo');
const shop = `${schema}_shop`;
after(async () => {
  const pool = new pg.Pool({ connectionString: databaseUrl() });
  await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE; DROP SCHEMA IF EXISTS "${shop}" CASCADE`);
  await pool.end();
});

describe('the demo (npm start)', () => {
  it('appends orders, runs the processors and the digest jobs, stops cleanly, and continues on restart', async () => {
    const args = [
      'demo',
      '--duration',
      '6',
      '--rate',
      '50',
      '--json',
      '--schema',
      schema,
      '--shop-schema',
      shop,
    ];
    const first = await runCli(args);
    assert.equal(first.code, 0, first.stderr);
    const summary = JSON.parse(first.stdout);
    assert.ok(summary.appended > 0, `nothing appended: ${first.stdout}${first.stderr}`);
    assert.deepEqual(
      summary.processors.map((p: { name: string }) => p.name),
      ['customer-digests', 'orders-export', 'revenue-by-customer-day'],
    );
    const revenue = summary.processors.find((p: { name: string }) => p.name === 'revenue-by-customer-day');
    // A timed run drains before it stops: every appended order is in the projection.
    assert.equal(revenue.lagEvents, 0);
    assert.equal(Number(revenue.processed), summary.appended);

    const second = await runCli(args);
    assert.equal(second.code, 0, second.stderr);
    const again = JSON.parse(second.stdout);
    assert.ok(Number(again.eventsTotal) > Number(summary.eventsTotal), 'the log keeps growing across runs');
    const revenueAgain = again.processors.find((p: { name: string }) => p.name === 'revenue-by-customer-day');
    assert.ok(Number(revenueAgain.processed) > Number(revenue.processed), 'continued from its checkpoint');
  });
});
