import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type App, createApp } from '../../src/app.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';
import { waitFor } from './support.js';

let t: TestApp;
let dir: string;
before(async () => {
  t = await isolatedApp('jobs_locks');
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'outbatch-locks-'));
});
after(async () => {
  await t.cleanup();
  await fs.rm(dir, { recursive: true, force: true });
});

const FAST = { pollInterval: 20, stallTimeout: 1_000, heartbeatInterval: 100, recoverInterval: 100 };
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Several workers, each its own app and pool (as separate processes would be), with the same tasks. */
async function startWorkers(count: number, register: (app: App) => void) {
  const controller = new AbortController();
  const apps = Array.from({ length: count }, () =>
    createApp({ databaseUrl: databaseUrl(), schema: t.schema }),
  );
  apps.forEach(register);
  const runs = apps.map((app) => app.run({ ...FAST, concurrency: 4, signal: controller.signal }));
  return {
    async stop() {
      controller.abort();
      await Promise.all(runs);
      await Promise.all(apps.map((app) => app.close()));
    },
  };
}

const status = async (id: string) =>
  (await t.pool.query(`SELECT status, last_error FROM "${t.schema}".jobs WHERE id = $1`, [id])).rows[0];

describe('locks', () => {
  it('four jobs sharing a lock, four workers: they run one at a time in creation order (abcd)', async () => {
    const file = path.join(dir, 'letters');
    await fs.writeFile(file, '');
    // Later letters finish faster: without the lock they would overtake earlier ones.
    const delays: Record<string, number> = { a: 120, b: 80, c: 40, d: 0 };
    const register = (app: App) =>
      app.task('letter', {}, async (args: { letter: string }) => {
        await sleep(delays[args.letter]!);
        await fs.appendFile(file, args.letter);
      });
    const deferrer = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    register(deferrer);
    for (const letter of 'abcd') await deferrer.defer('letter', { letter }, { lock: 'letters' });
    await deferrer.close();
    const workers = await startWorkers(4, register);
    try {
      await waitFor('all four letters', async () => (await fs.readFile(file, 'utf8')).length === 4);
    } finally {
      await workers.stop();
    }
    assert.equal(await fs.readFile(file, 'utf8'), 'abcd');
  });

  it('a job scheduled in the future does not block its lock', async () => {
    const ran: string[] = [];
    const register = (app: App) =>
      app.task('later', {}, async (args: { name: string }) => {
        ran.push(args.name);
      });
    const workers = await startWorkers(1, register);
    try {
      const deferrer = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
      register(deferrer);
      const future = await deferrer.defer('later', { name: 'future' }, { lock: 'L2', delay: { hours: 1 } });
      await deferrer.defer('later', { name: 'now' }, { lock: 'L2' });
      await deferrer.close();
      await waitFor('the due job', async () => ran.includes('now'));
      assert.ok(future.enqueued);
      assert.equal((await status(future.id)).status, 'todo');
    } finally {
      await workers.stop();
    }
    assert.deepEqual(ran, ['now']);
  });

  it('the known deadlock resolves: a dirty job whose queueing lock has a waiting job fails as superseded, and that job runs', async () => {
    const ran: string[] = [];
    const register = (app: App) =>
      app.task('sync', {}, async (args: { name: string }) => {
        ran.push(args.name);
      });
    const deferrer = createApp({ databaseUrl: databaseUrl(), schema: t.schema });
    register(deferrer);
    // Job A: doing, lock L and queueing lock Q, on a worker that died (no heartbeat row).
    const a = await deferrer.defer(
      'sync',
      { name: 'A' },
      { lock: 'account:1', queueingLock: 'sync:account:1' },
    );
    assert.ok(a.enqueued);
    await t.pool.query(
      `UPDATE "${t.schema}".jobs SET status = 'doing', attempts = 1, worker_id = 'dead-worker' WHERE id = $1`,
      [a.id],
    );
    // Job B: todo with the same L and Q. A cannot go back to todo (Q), B cannot start (L).
    const b = await deferrer.defer(
      'sync',
      { name: 'B' },
      { lock: 'account:1', queueingLock: 'sync:account:1' },
    );
    assert.ok(b.enqueued);
    await deferrer.close();

    const workers = await startWorkers(2, register);
    try {
      await waitFor('job B to run', async () => ran.includes('B'));
    } finally {
      await workers.stop();
    }
    assert.deepEqual(ran, ['B'], 'A is not re-run');
    const stuck = await status(a.id);
    assert.equal(stuck.status, 'failed');
    assert.match(stuck.last_error.message, /superseded/);
    assert.equal(await status(b.id), undefined, 'B succeeded and was deleted');
  });
});
