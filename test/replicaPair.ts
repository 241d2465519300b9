/**
 * A primary and a streaming replica of our own, for tests of `readUrl`: initdb in a temp
 * folder, `pg_basebackup -R`, two `postgres` on free ports. Never the shared server: a test
 * that paused replay or restarted it there would stall everyone.
 *
 * As root the servers run as the `postgres` user (PostgreSQL refuses root): the folders
 * are made under the system temp folder (every parent enterable) and handed to that user.
 * `stop()` stops both servers immediately and removes the folders; call it in `after`,
 * and it is safe to call after a failed `start` (it stops whatever did start).
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const run = promisify(execFile);

/** Debian's PostgreSQL binaries; override with OUTBATCH_TEST_PG_BIN. */
const PG_BIN = process.env.OUTBATCH_TEST_PG_BIN ?? '/usr/lib/postgresql/15/bin';

/** Ports tried in order; a busy one (another test, another engineer) is skipped. */
const PORTS = { first: 55460, last: 55479 };

export interface ReplicaPair {
  primaryUrl: string;
  replicaUrl: string;
  /** A query on the primary / on the replica, on a pool of the pair's own. */
  primary: pg.Pool;
  replica: pg.Pool;
  /** Stops WAL replay on the replica: it keeps receiving, its reads stay where they are. */
  pauseReplay(): Promise<void>;
  resumeReplay(): Promise<void>;
  /** Stops the replica (fast shutdown) and starts it again: an outage of the read server. */
  stopReplica(): Promise<void>;
  startReplica(): Promise<void>;
  /** Resolves once the replica has replayed everything the primary had written when called. */
  caughtUp(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/** Why replica tests cannot run here, or undefined when they can. */
export function replicaPairUnavailable(): string | undefined {
  for (const binary of ['initdb', 'pg_ctl', 'postgres', 'pg_basebackup']) {
    if (!fs.existsSync(path.join(PG_BIN, binary))) return `no ${binary} in ${PG_BIN}`;
  }
  if (process.getuid?.() === 0 && !userExists('postgres')) return 'running as root without a postgres user';
  return undefined;
}

function userExists(name: string): boolean {
  try {
    return fs
      .readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .some((line) => line.startsWith(`${name}:`));
  } catch {
    return false;
  }
}

/** The command line running a PostgreSQL binary, as the postgres user when we are root. */
function pgCommand(binary: string, args: string[]): [string, string[]] {
  const file = path.join(PG_BIN, binary);
  return process.getuid?.() === 0 ? ['runuser', ['-u', 'postgres', '--', file, ...args]] : [file, args];
}

async function pgRun(binary: string, args: string[]): Promise<string> {
  const { stdout } = await run(...pgCommand(binary, args), { env: { ...process.env, LC_ALL: 'C' } });
  return stdout;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

async function freePorts(count: number): Promise<number[]> {
  const found: number[] = [];
  for (let port = PORTS.first; port <= PORTS.last && found.length < count; port++) {
    if (await portFree(port)) found.push(port);
  }
  if (found.length < count) throw new Error(`no ${count} free ports in ${PORTS.first}-${PORTS.last}`);
  return found;
}

export async function startReplicaPair(): Promise<ReplicaPair> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'outbatch-replica-'));
  fs.chmodSync(root, 0o755);
  const primaryDir = path.join(root, 'primary');
  const replicaDir = path.join(root, 'replica');
  const started: string[] = [];
  const pools: pg.Pool[] = [];
  // A test process that exits without calling stop() (a crash, process.exit) still stops
  // the servers: 'exit' handlers may only run synchronous code, hence execFileSync.
  const stopOnExit = () => {
    for (const dir of started.reverse()) {
      try {
        execFileSync(...pgCommand('pg_ctl', ['-D', dir, '-m', 'immediate', 'stop']), { stdio: 'ignore' });
      } catch {
        // already stopped
      }
    }
    fs.rmSync(root, { recursive: true, force: true });
  };
  process.once('exit', stopOnExit);
  const stop = async () => {
    process.off('exit', stopOnExit);
    await Promise.all(pools.map((pool) => pool.end().catch(() => {})));
    for (const dir of started.reverse()) {
      await pgRun('pg_ctl', ['-D', dir, '-m', 'immediate', '-w', 'stop']).catch(() => {});
    }
    started.length = 0;
    fs.rmSync(root, { recursive: true, force: true });
  };
  try {
    if (process.getuid?.() === 0) await run('chown', ['postgres:postgres', root]);
    const [primaryPort, replicaPort] = (await freePorts(2)) as [number, number];
    await pgRun('initdb', ['-D', primaryDir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8']);
    // initdb's pg_hba.conf already trusts replication connections from 127.0.0.1.
    const settings = [
      `port = ${primaryPort}`,
      `listen_addresses = '127.0.0.1'`,
      `unix_socket_directories = '${root}'`,
      'wal_level = replica',
      'max_wal_senders = 4',
      'hot_standby = on',
      'fsync = off',
      'max_connections = 40',
      'shared_buffers = 16MB',
    ];
    fs.appendFileSync(path.join(primaryDir, 'postgresql.conf'), `\n${settings.join('\n')}\n`);
    await pgRun('pg_ctl', ['-D', primaryDir, '-l', path.join(root, 'primary.log'), '-w', 'start']);
    started.push(primaryDir);
    await pgRun('pg_basebackup', [
      ...['-h', '127.0.0.1', '-p', String(primaryPort), '-U', 'postgres'],
      ...['-D', replicaDir, '-R', '-X', 'stream', '--no-sync'],
    ]);
    // The copied postgresql.conf names the primary's port: a later line wins.
    fs.appendFileSync(path.join(replicaDir, 'postgresql.conf'), `\nport = ${replicaPort}\n`);
    // -w waits until the standby accepts read-only connections.
    await pgRun('pg_ctl', ['-D', replicaDir, '-l', path.join(root, 'replica.log'), '-w', 'start']);
    started.push(replicaDir);

    const primaryUrl = `postgres://postgres@127.0.0.1:${primaryPort}/postgres`;
    const replicaUrl = `postgres://postgres@127.0.0.1:${replicaPort}/postgres`;
    const primary = new pg.Pool({ connectionString: primaryUrl, max: 3 });
    const replica = new pg.Pool({ connectionString: replicaUrl, max: 3 });
    pools.push(primary, replica);
    // An idle connection cut by stopReplica must not crash the test process.
    for (const pool of pools) pool.on('error', () => {});
    return {
      primaryUrl,
      replicaUrl,
      primary,
      replica,
      async pauseReplay() {
        await replica.query('SELECT pg_wal_replay_pause()');
      },
      async resumeReplay() {
        await replica.query('SELECT pg_wal_replay_resume()');
      },
      async stopReplica() {
        await pgRun('pg_ctl', ['-D', replicaDir, '-m', 'fast', '-w', 'stop']);
      },
      async startReplica() {
        await pgRun('pg_ctl', ['-D', replicaDir, '-l', path.join(root, 'replica.log'), '-w', 'start']);
      },
      async caughtUp(timeoutMs = 30_000) {
        const { rows } = await primary.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
        const target = rows[0]!.lsn;
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          const { rows: replayed } = await replica.query<{ done: boolean }>(
            'SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS done',
            [target],
          );
          if (replayed[0]?.done) return;
          if (Date.now() > deadline) throw new Error(`the replica did not replay up to ${target} in time`);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      },
      stop,
    };
  } catch (error) {
    const logs = ['primary.log', 'replica.log']
      .map((name) => path.join(root, name))
      .filter((file) => fs.existsSync(file))
      .map((file) => fs.readFileSync(file, 'utf8').split('\n').slice(-5).join('\n'));
    await stop();
    throw new Error(`could not start a primary and replica pair: ${String(error)}\n${logs.join('\n')}`, {
      cause: error,
    });
  }
}
