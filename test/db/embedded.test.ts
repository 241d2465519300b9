// @smoke
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import pg from 'pg';
import { startEmbedded } from '../../src/db/embedded.js';
import { EmbeddedServerError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { CLI, ROOT } from '../helpers.js';

const log = createLogger({ level: 'silent' });
const folders: string[] = [];

async function tempFolder(): Promise<string> {
  // mkdtemp makes a 0700 folder: the trap where the unprivileged server user cannot enter.
  const folder = await fs.mkdtemp(path.join(os.tmpdir(), 'outbatch-embedded-'));
  folders.push(folder);
  return folder;
}

after(async () => {
  for (const folder of folders) {
    const pidFile = path.join(folder, 'pg', 'postmaster.pid');
    const pid = Number((await fs.readFile(pidFile, 'utf8').catch(() => '')).split('\n')[0]);
    if (pid > 0) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {}
    }
    await fs.rm(folder, { recursive: true, force: true });
  }
});

/** Starts `outbatch db start` and resolves with the process and the URL it prints. */
function dbStart(dataDir: string): Promise<{ child: ChildProcess; url: string }> {
  return new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env, LOG_LEVEL: 'warn' };
    delete env.DATABASE_URL;
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'db', 'start', '--data-dir', dataDir], {
      cwd: ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const match = /DATABASE_URL=(\S+)/.exec(out);
      if (match) resolve({ child, url: match[1]! });
    });
    child.stderr.on('data', (chunk) => {
      err += chunk;
    });
    child.on('exit', (code) => reject(new Error(`db start exited ${code}: ${err}`)));
  });
}

function killed(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

async function query(url: string, sql: string) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await client.query(sql);
  } finally {
    await client.end();
  }
}

describe('embedded PostgreSQL', () => {
  it('survives a SIGKILLed starter, and a stale postmaster.pid, keeping the data', async () => {
    const dataDir = path.join(await tempFolder(), 'pg');
    const first = await dbStart(dataDir);
    await query(first.url, 'CREATE TABLE kept (v text); INSERT INTO kept VALUES ($$before the kill$$)');

    // 1. The starter dies without cleaning up; the server is left running.
    await killed(first.child);
    const second = await dbStart(dataDir);
    assert.equal((await query(second.url, 'SELECT v FROM kept')).rows[0].v, 'before the kill');

    // 2. Starter and server both die: postmaster.pid stays behind, stale.
    const pid = Number((await fs.readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0]);
    await killed(second.child);
    process.kill(-pid, 'SIGKILL');
    while (true) {
      try {
        process.kill(pid, 0);
        await new Promise((resolve) => setTimeout(resolve, 50));
      } catch {
        break;
      }
    }
    await fs.access(path.join(dataDir, 'postmaster.pid'));
    const third = await dbStart(dataDir);
    assert.equal((await query(third.url, 'SELECT v FROM kept')).rows[0].v, 'before the kill');

    // 3. A clean stop on SIGTERM leaves no server behind.
    const exited = new Promise((resolve) => third.child.once('exit', resolve));
    third.child.kill('SIGTERM');
    assert.equal(await exited, 0);
    await assert.rejects(fs.access(path.join(dataDir, 'postmaster.pid')));
  });

  it('turns a failed start into an error carrying the server log', async () => {
    const dataDir = path.join(await tempFolder(), 'pg');
    const server = await startEmbedded({ dataDir, log });
    await server.stop();
    await fs.appendFile(path.join(dataDir, 'postgresql.conf'), "\nshared_buffers = 'banana'\n");
    await assert.rejects(startEmbedded({ dataDir, log }), (error: unknown) => {
      assert.ok(error instanceof EmbeddedServerError);
      assert.match(error.message, /exited during start/);
      assert.match(error.message, /shared_buffers/);
      return true;
    });
  });

  it('refuses a data folder that holds something else', async () => {
    const dataDir = path.join(await tempFolder(), 'pg');
    await fs.mkdir(dataDir);
    await fs.writeFile(path.join(dataDir, 'notes.txt'), 'mine');
    await assert.rejects(
      startEmbedded({ dataDir, log }),
      /is not a PostgreSQL data folder: remove it or set OUTBATCH_DATA_DIR/,
    );
    assert.equal(await fs.readFile(path.join(dataDir, 'notes.txt'), 'utf8'), 'mine');
  });
});
