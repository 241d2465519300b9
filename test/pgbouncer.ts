/**
 * A PgBouncer of the test's own, in transaction mode, in front of the test's PostgreSQL: its
 * ini and auth file in a temporary folder, on a free port from 6432-6440 (or the range
 * OUTBATCH_TEST_PGBOUNCER_PORTS names, `6441-6450`, beside another suite's), stopped by
 * `stop()`. `missingReason()` says in one line why a test must be skipped (no binary).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { databaseUrl } from './helpers.js';

const CANDIDATES = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer', '/usr/local/bin/pgbouncer'];
const [FIRST_PORT, LAST_PORT] = (process.env.OUTBATCH_TEST_PGBOUNCER_PORTS || '6432-6440')
  .split('-')
  .map(Number);
const PORTS = Array.from({ length: LAST_PORT! - FIRST_PORT! + 1 }, (_, i) => FIRST_PORT! + i);

function binary(): string | undefined {
  const found = CANDIDATES.find((file) => fs.existsSync(file));
  if (found) return found;
  try {
    return execFileSync('sh', ['-c', 'command -v pgbouncer'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Why the PgBouncer tests cannot run here, or undefined when they can. */
export function missingReason(): string | undefined {
  if (!binary()) return 'pgbouncer is not installed (apt-get install -y pgbouncer)';
  return undefined;
}

function systemUser(name: string): { name: string; uid: number; gid: number } {
  const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim());
  return { name, uid, gid };
}

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

export interface Bouncer {
  /** postgres:// URL through PgBouncer, same user and database as DATABASE_URL. */
  url: string;
  port: number;
  /** The admin console (`SHOW POOLS` etc.). */
  adminUrl: string;
  stop(): Promise<void>;
}

export interface BouncerOptions {
  /** Server connections per user/database pair (default 2): small, so transactions hop between them. */
  poolSize?: number;
}

/** Starts PgBouncer in transaction mode; resolves once it accepts connections. */
export async function startBouncer(options: BouncerOptions = {}): Promise<Bouncer> {
  const bin = binary();
  if (!bin) throw new Error('pgbouncer is not installed');
  const target = new URL(databaseUrl());
  const user = decodeURIComponent(target.username || 'postgres');
  const database = target.pathname.slice(1) || 'postgres';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outbatch-pgbouncer-'));
  // PgBouncer refuses to run as root: as root it switches to the postgres user (-u), which
  // must own the folder for its log, pid file and socket.
  const asUser = process.getuid?.() === 0 ? systemUser('postgres') : undefined;
  if (asUser) fs.chownSync(dir, asUser.uid, asUser.gid);
  let lastError: unknown;
  for (const port of PORTS) {
    if (!(await portIsFree(port))) continue;
    const ini = [
      '[databases]',
      // With a password in the URL (the embedded server's), PgBouncer logs in with it.
      `${database} = host=${target.hostname} port=${target.port || 5432} dbname=${database}${
        target.password ? ` user=${user} password=${decodeURIComponent(target.password)}` : ''
      }`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      `unix_socket_dir = ${dir}`,
      'auth_type = trust',
      `auth_file = ${path.join(dir, 'users.txt')}`,
      `admin_users = ${user}`,
      'pool_mode = transaction',
      `default_pool_size = ${options.poolSize ?? 2}`,
      'min_pool_size = 0',
      'reserve_pool_size = 0',
      'max_client_conn = 200',
      'server_reset_query =',
      `logfile = ${path.join(dir, 'pgbouncer.log')}`,
      `pidfile = ${path.join(dir, 'pgbouncer.pid')}`,
    ].join('\n');
    fs.writeFileSync(path.join(dir, 'pgbouncer.ini'), `${ini}\n`);
    fs.writeFileSync(path.join(dir, 'users.txt'), `"${user}" ""\n`);
    const args = [...(asUser ? ['-u', asUser.name] : []), path.join(dir, 'pgbouncer.ini')];
    const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (chunk) => {
      stderr += chunk;
    });
    const url = `postgres://${encodeURIComponent(user)}@127.0.0.1:${port}/${database}`;
    try {
      await waitUntilListening(child, port, () => stderr);
    } catch (error) {
      lastError = error;
      child.kill('SIGKILL');
      continue;
    }
    return {
      url,
      port,
      adminUrl: `postgres://${encodeURIComponent(user)}@127.0.0.1:${port}/pgbouncer`,
      stop: () => stopChild(child, dir),
    };
  }
  fs.rmSync(dir, { recursive: true, force: true });
  throw new Error(`could not start pgbouncer on any of ports ${PORTS.join(', ')}: ${String(lastError)}`);
}

async function waitUntilListening(child: ChildProcess, port: number, stderr: () => string): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    if (child.exitCode !== null) throw new Error(`pgbouncer exited: ${stderr().trim()}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('pgbouncer did not start listening within 5 s');
}

function stopChild(child: ChildProcess, dir: string): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      fs.rmSync(dir, { recursive: true, force: true });
      resolve();
    };
    if (child.exitCode !== null) return done();
    child.once('exit', done);
    // SIGINT: PgBouncer's "safe shutdown" waits for clients; SIGTERM closes at once.
    child.kill('SIGTERM');
  });
}
