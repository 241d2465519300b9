/**
 * The dashboard against a browser turned against it: DNS rebinding (a page on
 * evil.example whose name now points at the dashboard) is refused by the Host check on
 * the page, the API and /metrics; and other sessions' query text needs the token.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { parseAllowedHosts } from '../../src/admin/hostCheck.js';
import { type AdminServer, startAdminServer } from '../../src/admin/server.js';
import { captureLog, isolatedApp, type TestApp } from '../helpers.js';

const TOKEN = 'security-token-8d2a41';

interface Answer {
  status: number;
  body: string;
}

/** A GET with a chosen Host header (fetch does not let a caller set Host). */
function get(port: number, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const request = http.request({ host: '127.0.0.1', port, path, headers }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => {
        body += chunk;
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    request.on('error', reject);
    request.end();
  });
}

describe('dashboard security', () => {
  let t: TestApp;
  let loopback: AdminServer;
  let named: AdminServer;

  before(async () => {
    t = await isolatedApp('admin_security');
    loopback = await startAdminServer({ app: t.app, port: 0, token: TOKEN });
    named = await startAdminServer({
      app: t.app,
      port: 0,
      token: TOKEN,
      allowedHosts: ['dashboard.example.com', 'ops.internal:9000'],
    });
  });
  after(async () => {
    await loopback?.close();
    await named?.close();
    await t?.cleanup();
  });

  it('refuses a rebound Host (evil.example) on the page, the API and /metrics, in one line saying how to allow it', async () => {
    for (const path of ['/', '/api/overview', '/api/jobs/1', '/metrics', '/api/transactions/oldest']) {
      const answer = await get(loopback.port, path, { host: `evil.example:${loopback.port}` });
      assert.equal(answer.status, 421, path);
      assert.doesNotMatch(answer.body, /outbatch_|schema|<html/, path);
      const { error } = JSON.parse(answer.body) as { error: string };
      assert.equal(error.split('\n').length, 1);
      assert.match(error, /host "evil\.example:\d+" is not allowed/);
      assert.match(error, /--allowed-host or OUTBATCH_DASHBOARD_ALLOWED_HOSTS/);
    }
    // Liveness says nothing and probes use any name.
    assert.equal((await get(loopback.port, '/healthz', { host: 'evil.example' })).status, 200);
  });

  it('answers the loopback names on its own port, and nothing else, when bound to 127.0.0.1', async () => {
    const port = loopback.port;
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`, `[::1]:${port}`]) {
      assert.equal((await get(port, '/api/overview', { host })).status, 200, host);
    }
    for (const host of [
      `localhost:${port + 1}`,
      'localhost',
      `10.0.0.5:${port}`,
      `127.0.0.1.evil.example:${port}`,
    ]) {
      assert.equal((await get(port, '/api/overview', { host })).status, 421, host);
    }
  });

  it('answers allow-listed names: any port without one, that port with one', async () => {
    const port = named.port;
    assert.equal((await get(port, '/metrics', { host: 'dashboard.example.com' })).status, 200);
    assert.equal((await get(port, '/', { host: 'Dashboard.Example.com:443' })).status, 200);
    assert.equal((await get(port, '/api/overview', { host: 'ops.internal:9000' })).status, 200);
    assert.equal((await get(port, '/api/overview', { host: 'ops.internal:9001' })).status, 421);
    assert.equal((await get(port, '/api/overview', { host: `127.0.0.1:${port}` })).status, 200);
    assert.equal((await get(port, '/api/overview', { host: 'evil.example' })).status, 421);
  });

  it('reads the allow-list from OUTBATCH_DASHBOARD_ALLOWED_HOSTS when none is given', async () => {
    process.env.OUTBATCH_DASHBOARD_ALLOWED_HOSTS = 'from-env.example, other.example:8443';
    let server: AdminServer | undefined;
    try {
      server = await startAdminServer({ app: t.app, port: 0 });
      assert.equal((await get(server.port, '/metrics', { host: 'from-env.example' })).status, 200);
      assert.equal((await get(server.port, '/metrics', { host: 'other.example:8443' })).status, 200);
      assert.equal((await get(server.port, '/metrics', { host: 'evil.example' })).status, 421);
    } finally {
      delete process.env.OUTBATCH_DASHBOARD_ALLOWED_HOSTS;
      await server?.close();
    }
    await assert.rejects(
      startAdminServer({ app: t.app, port: 0, allowedHosts: ['http://x.example/'] }),
      /^ValidationError: allowedHosts "http:\/\/x\.example\/" is invalid/,
    );
    assert.throws(
      () => parseAllowedHosts(['good.example,bad host'], 'OUTBATCH_DASHBOARD_ALLOWED_HOSTS'),
      /OUTBATCH_DASHBOARD_ALLOWED_HOSTS "bad host" is invalid: expected a host name/,
    );
  });

  it('bound to 0.0.0.0: with no allow-list answers any Host and says so at start; with one, its names and IP addresses only', async () => {
    const { log, lines } = captureLog();
    const open = await startAdminServer({ app: t.app, host: '0.0.0.0', port: 0, log });
    const guarded = await startAdminServer({
      app: t.app,
      host: '0.0.0.0',
      port: 0,
      log,
      allowedHosts: ['dashboard.example.com'],
    });
    try {
      assert.equal((await get(open.port, '/metrics', { host: 'evil.example' })).status, 200);
      const warnings = lines.filter((line) => /Host checking accepts any host/.test(line));
      assert.equal(warnings.length, 1, lines.join(''));
      assert.match(warnings[0]!, /--allowed-host or OUTBATCH_DASHBOARD_ALLOWED_HOSTS/);
      assert.equal((await get(guarded.port, '/metrics', { host: 'evil.example' })).status, 421);
      assert.equal((await get(guarded.port, '/metrics', { host: 'dashboard.example.com' })).status, 200);
      // A pod's address, as Prometheus and probes send it: no name, so no rebinding.
      assert.equal((await get(guarded.port, '/metrics', { host: `10.1.2.3:${guarded.port}` })).status, 200);
    } finally {
      await open.close();
      await guarded.close();
    }
  });

  it("hides other sessions' query text without the token and shows it with the token", async () => {
    const marker = `card-4111-${Date.now()}`;
    const holder: pg.PoolClient = await t.pool.connect();
    try {
      await holder.query('BEGIN');
      const { rows } = await holder.query<{ pid: number }>(
        `SELECT pg_backend_pid() AS pid, pg_current_xact_id(), '${marker}' AS secret`,
      );
      const mine = rows[0]!.pid;
      type Tx = {
        kind: string;
        pid: number | null;
        query: string | null;
        queryHidden: boolean;
        age_seconds: number;
      };
      const read = async (path: string, headers: Record<string, string>) => {
        const answer = await get(loopback.port, path, headers);
        assert.equal(answer.status, 200, answer.body);
        return (JSON.parse(answer.body) as { oldestTransaction: Tx | null }).oldestTransaction;
      };
      for (const path of ['/api/transactions/oldest', '/api/overview']) {
        const anonymous = await read(path, {});
        const wrongToken = await read(path, { authorization: 'Bearer not-it' });
        const operator = await read(path, { authorization: `Bearer ${TOKEN}` });
        // Our open transaction guarantees one; it is the oldest unless another test's is older.
        for (const tx of [anonymous, wrongToken, operator]) assert.ok(tx, path);
        for (const tx of [anonymous!, wrongToken!]) {
          assert.equal(tx.query, null, path);
          assert.equal(tx.queryHidden, tx.kind === 'session', path);
          assert.ok(tx.age_seconds >= 0 && tx.kind, path);
        }
        assert.equal(anonymous!.pid === null, anonymous!.kind === 'prepared');
        assert.equal(operator!.queryHidden, false);
        if (operator!.pid === mine) assert.match(operator!.query ?? '', new RegExp(marker));
        if (operator!.kind === 'session') assert.notEqual(operator!.query, null);
      }
    } finally {
      await holder.query('ROLLBACK');
      holder.release();
    }
  });
});
