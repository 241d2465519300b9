import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import pg from 'pg';
import { filter, firstValueFrom, type Observable, ReplaySubject, take, toArray } from 'rxjs';
import { openDatabase } from '../../src/db/database.js';
import { type ListenEvent, listen } from '../../src/db/listen.js';
import { ValidationError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { captureLog, databaseUrl, uniqueSchema } from '../helpers.js';
import { waitFor } from '../jobs/support.js';

describe('listen()', () => {
  it('delivers notifications, reconnects after the backend is terminated, and closes on unsubscribe', async () => {
    const channel = uniqueSchema('ch');
    const pool = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
    const appName = `listen-test-${channel}`;
    const events$ = new ReplaySubject<ListenEvent>();
    const subscription = listen({
      url: databaseUrl(),
      channels: [channel],
      log: silentLogger(),
      initialDelayMs: 10,
      applicationName: appName,
    }).subscribe(events$);
    const backends = async () =>
      (await pool.query('SELECT pid FROM pg_stat_activity WHERE application_name = $1', [appName])).rows.map(
        (r) => r.pid as number,
      );
    const connected = (n: number) => nth(events$, (e) => e.kind === 'connected', n);
    const notified = (n: number) => nth(events$, (e) => e.kind === 'notification', n);
    try {
      await connected(1);
      await pool.query('SELECT pg_notify($1, $2)', [channel, 'one']);
      assert.deepEqual(await notified(1), { kind: 'notification', channel, payload: 'one' });

      const [pid] = await backends();
      await pool.query('SELECT pg_terminate_backend($1)', [pid]);
      await connected(2);
      await pool.query('SELECT pg_notify($1, $2)', [channel, 'two']);
      assert.deepEqual(await notified(2), { kind: 'notification', channel, payload: 'two' });
      assert.notEqual((await backends())[0], pid);
    } finally {
      subscription.unsubscribe();
    }
    for (let i = 0; (await backends()).length > 0; i++) {
      assert.ok(i < 500, 'the listening connection was closed');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await pool.end();
  });

  it('errors (no retry) when the database does not exist, and validates channel names', async () => {
    const url = new URL(databaseUrl());
    url.pathname = '/no_such_database_outbatch';
    await assert.rejects(
      firstValueFrom(listen({ url: url.toString(), channels: ['x'], log: silentLogger() })),
      (error: Error) => {
        assert.match(error.message, /^cannot connect to PostgreSQL at .*: database does not exist/);
        assert.equal(error.message.split('\n').length, 1);
        return true;
      },
    );
    assert.throws(
      () => listen({ url: databaseUrl(), channels: ['Bad-Name'], log: silentLogger() }),
      ValidationError,
    );
  });

  it('keeps retrying while the host name does not resolve, warning once', async () => {
    const { log, lines } = captureLog('debug');
    const errors: unknown[] = [];
    const subscription = listen({
      url: 'postgres://x@no-such-host.invalid:5432/db',
      channels: ['x'],
      log,
      initialDelayMs: 10,
      maxDelayMs: 50,
    }).subscribe({ error: (error) => errors.push(error) });
    try {
      await waitFor('three failed attempts', async () => attempts(lines) >= 3 || errors.length > 0);
      assert.deepEqual(errors, []);
      const warnings = records(lines).filter((record) => record.level === 40);
      assert.equal(warnings.length, 1);
      assert.equal(warnings[0]?.msg, 'listen connection failed; retrying');
      assert.equal(warnings[0]?.err?.code, 'ENOTFOUND');
    } finally {
      subscription.unsubscribe();
    }
  });

  it('connects through a proxy that starts accepting after the first attempts were refused', async () => {
    const port = await freePort();
    const { log, lines } = captureLog('debug');
    const channel = uniqueSchema('ch');
    const events$ = new ReplaySubject<ListenEvent>();
    const subscription = listen({
      url: viaPort(port),
      channels: [channel],
      log,
      initialDelayMs: 10,
      maxDelayMs: 50,
    }).subscribe(events$);
    const proxy = tcpProxy();
    const pool = new pg.Pool({ connectionString: databaseUrl(), max: 1 });
    try {
      await waitFor('two refused attempts', async () => attempts(lines) >= 2);
      await proxy.listen(port);
      await nth(events$, (e) => e.kind === 'connected', 1);
      await pool.query('SELECT pg_notify($1, $2)', [channel, 'through']);
      assert.deepEqual(await nth(events$, (e) => e.kind === 'notification', 1), {
        kind: 'notification',
        channel,
        payload: 'through',
      });
      // One warning for the whole run of refusals, one line when it is over.
      assert.equal(records(lines).filter((record) => record.level === 40).length, 1);
      assert.ok(records(lines).some((record) => record.msg === 'listen connection is back'));
    } finally {
      subscription.unsubscribe();
      await proxy.close();
      await pool.end();
    }
  });

  it('finds a half-open connection with its liveness check, reconnects and announces it', async () => {
    const proxy = tcpProxy();
    const port = await proxy.listen(0);
    const channel = uniqueSchema('ch');
    const events$ = new ReplaySubject<ListenEvent>();
    const subscription = listen({
      url: viaPort(port),
      channels: [channel],
      log: silentLogger(),
      initialDelayMs: 10,
      livenessIntervalMs: 100,
      // Generous: a busy test machine must not take a slow answer for a dead peer.
      livenessTimeoutMs: 2_000,
    }).subscribe(events$);
    const pool = new pg.Pool({ connectionString: databaseUrl(), max: 1 });
    const connected = (n: number) => nth(events$, (e) => e.kind === 'connected', n);
    try {
      await connected(1);
      const before = proxy.accepted();
      // The peer vanishes without FIN or RST: the socket stays open and nothing arrives.
      proxy.silence();
      // Without a liveness check this would wait forever; the bound only makes the failure readable.
      await waitFor('the listener to reconnect', async () => proxy.accepted() > before, 60_000);
      await connected(2);
      await pool.query('SELECT pg_notify($1, $2)', [channel, 'after']);
      const notes = events$.pipe(filter((e) => e.kind === 'notification'));
      assert.deepEqual(await firstValueFrom(notes), { kind: 'notification', channel, payload: 'after' });
    } finally {
      subscription.unsubscribe();
      await proxy.close();
      await pool.end();
    }
  });
});

/** The n-th event matching `match` (1-based), from a replaying source. */
function nth(source: Observable<ListenEvent>, match: (e: ListenEvent) => boolean, n: number) {
  return firstValueFrom(source.pipe(filter(match), take(n), toArray())).then((all) => all[n - 1]);
}

type LogRecord = { level: number; msg: string; attempt?: number; err?: { code?: string } } & Record<
  string,
  never
>;

function records(lines: string[]): LogRecord[] {
  return lines.map((line) => JSON.parse(line));
}

/** Failed connection attempts logged so far: the first warns, later ones carry `attempt`. */
function attempts(lines: string[]): number {
  return Math.max(0, ...records(lines).map((record) => record.attempt ?? (record.level === 40 ? 1 : 0)));
}

/** The test database's URL, pointed at 127.0.0.1:`port` (where a test's proxy listens). */
function viaPort(port: number): string {
  const url = new URL(databaseUrl());
  url.hostname = '127.0.0.1';
  url.port = String(port);
  return url.toString();
}

/** A port nothing listens on (yet): connecting to it is refused. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A TCP proxy to the test database whose open connections the test can silence. */
function tcpProxy() {
  const target = new URL(databaseUrl());
  const pairs = new Set<[net.Socket, net.Socket]>();
  let accepted = 0;
  const server = net.createServer((downstream) => {
    accepted += 1;
    const upstream = net.connect(Number(target.port || 5432), target.hostname || '127.0.0.1');
    const pair: [net.Socket, net.Socket] = [downstream, upstream];
    pairs.add(pair);
    const drop = () => {
      downstream.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    for (const socket of pair) {
      socket.on('error', drop);
      socket.on('close', drop);
    }
    downstream.pipe(upstream);
    upstream.pipe(downstream);
  });
  return {
    async listen(port: number): Promise<number> {
      await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
      return (server.address() as net.AddressInfo).port;
    },
    accepted: () => accepted,
    /** Every open connection stops carrying bytes either way, yet stays open. New ones work. */
    silence() {
      for (const [downstream, upstream] of pairs) {
        downstream.unpipe(upstream);
        upstream.unpipe(downstream);
        downstream.pause();
        upstream.pause();
      }
    },
    async close() {
      for (const [downstream, upstream] of pairs) {
        downstream.destroy();
        upstream.destroy();
      }
      if (server.listening) await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe('listenUrl', () => {
  it('naming another database than databaseUrl is said once, as an error: no NOTIFY would reach it', async () => {
    const other = new URL(databaseUrl());
    other.pathname = other.pathname === '/postgres' ? '/template1' : '/postgres';
    const { log, lines } = captureLog('warn');
    const db = await openDatabase({ databaseUrl: databaseUrl(), listenUrl: other.toString(), log });
    try {
      assert.equal(db.listenTarget(), other.toString());
      db.listenTarget();
      await waitFor('the listenUrl complaint', async () => lines.some((line) => line.includes('"level":50')));
      const errors = lines.filter((line) => line.includes('"level":50'));
      assert.equal(errors.length, 1);
      assert.match(
        JSON.parse(errors[0]!).msg,
        /^listenUrl \(.+\) is database "(postgres|template1)", but databaseUrl is ".+": no notification reaches it/,
      );
    } finally {
      await db.close();
    }
  });
});
