/**
 * Queue and group limits (docs/limits.md), enforced in the claim: the claim statements
 * driven directly with explicit times (deterministic), then real worker processes under
 * load — one killed with SIGKILL — with every run's start and end recorded by the
 * database's clock and the most runs at once counted.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startAdminServer } from '../../src/admin/server.js';
import { createApp } from '../../src/app.js';
import { ValidationError } from '../../src/errors.js';
import { claimJobs } from '../../src/jobs/claim.js';
import { claimLimitedJobs } from '../../src/jobs/claimLimited.js';
import { asRateLimited, parseRetryAfter, RateLimited } from '../../src/jobs/rateLimited.js';
import { type FaultProxy, startFaultProxy } from '../faultProxy.js';
import { databaseUrl, isolatedApp, ROOT, runCli, type TestApp } from '../helpers.js';
import { spawnWorker, type WorkerProcess, waitFor, withRunningWorker, workerStarted } from './support.js';

const LIMITS_APP = `${ROOT}/test/fixtures/limits-app.ts`;
const QUICK = ['--stall-timeout', '1s', '--heartbeat-interval', '200ms', '--poll-interval', '100ms'];

let t: TestApp;
let q: string;
const alive: WorkerProcess[] = [];
before(async () => {
  t = await isolatedApp('limits');
  q = `"${t.schema}"`;
  await t.pool.query(
    `CREATE TABLE ${q}.lim_runs (seq bigserial, job_id bigint NOT NULL, queue text NOT NULL, grp text, pid int NOT NULL,
       attempt int NOT NULL, what text NOT NULL DEFAULT 'ran', started timestamptz NOT NULL, ended timestamptz)`,
  );
});
after(async () => {
  for (const worker of alive) worker.child.kill('SIGKILL');
  await t.cleanup();
});

function start(args: string[] = []): WorkerProcess {
  const worker = spawnWorker(t.schema, [...QUICK, ...args], LIMITS_APP);
  alive.push(worker);
  return worker;
}

async function stop(...workers: WorkerProcess[]): Promise<void> {
  for (const worker of workers) worker.child.kill('SIGTERM');
  await Promise.all(workers.map((worker) => worker.exited));
}

async function reset(): Promise<void> {
  await t.pool.query(`TRUNCATE ${q}.lim_runs, ${q}.queue_limits, ${q}.queue_groups`);
  await t.pool.query(`DELETE FROM ${q}.jobs`);
}

/** Defers `n` jobs of `task` straight through defer_jobs(), in one statement. */
async function deferJobs(n: number, queue: string, group: string | null, args: object = {}): Promise<void> {
  await t.pool.query(
    `SELECT ${q}.defer_jobs(array_fill('counted'::text, ARRAY[$1::int]), array_fill($4::jsonb, ARRAY[$1::int]),
       array_fill($2::text, ARRAY[$1::int]), NULL, NULL, NULL, NULL, NULL, NULL, array_fill($3::text, ARRAY[$1::int]))`,
    [n, queue, group, JSON.stringify(args)],
  );
}

/** The most runs that overlapped, per queue or per group; a run whose worker died ends at `deadAt`. */
async function maxOverlap(perGroup: boolean, deadAt: Date | null = null): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(
    `SELECT coalesce(max(n), 0)::int AS n FROM (
       SELECT (SELECT count(*) FROM ${q}.lim_runs r
               WHERE r.what = 'ran' AND r.queue = s.queue AND r.started <= s.started
                 AND coalesce(r.ended, $1, 'infinity') > s.started
                 AND (NOT $2 OR r.grp IS NOT DISTINCT FROM s.grp)) AS n
       FROM ${q}.lim_runs s WHERE s.what = 'ran') x`,
    [deadAt, perGroup],
  );
  return rows[0]!.n;
}

const count = async (sql: string, params: unknown[] = []) =>
  (await t.pool.query<{ n: number }>(sql, params)).rows[0]!.n;

describe('queue limits', () => {
  it('bad limits and bad groups are one-line errors, and nothing is written', async () => {
    await reset();
    const bad: [unknown, RegExp][] = [
      [{ concurrency: 0 }, /concurrency 0 is invalid: expected an integer from 1 to 1000000/],
      [{ concurrency: 2.5 }, /concurrency 2\.5 is invalid/],
      [{ groupConcurrency: '3' }, /groupConcurrency "3" is invalid/],
      [{ rate: { max: 10 } }, /rate\.per undefined is invalid/],
      [{ rate: { max: 10, per: { hours: 1 }, burst: 2 } }, /rate has unknown field "burst"/],
      [{ rate: { max: 0, per: 1000 } }, /rate\.max 0 is invalid/],
      [{ concurency: 3 }, /queue limit "concurency" is unknown/],
      [{}, /queue limits are empty/],
      [null, /queue limits are invalid/],
    ];
    for (const [limits, message] of bad) {
      await assert.rejects(
        t.app.queues.configure('mail', limits as never),
        (error: unknown) => error instanceof ValidationError && message.test(error.message),
        JSON.stringify(limits),
      );
    }
    await assert.rejects(t.app.queues.configure('a b', { concurrency: 1 }), /queue name "a b" is invalid/);
    const task = t.app.task('grouped', { queue: 'mail' }, async () => {});
    await assert.rejects(task.defer({}, { group: '' }), /group "" is invalid: expected a non-empty string/);
    await assert.rejects(task.defer({}, { group: 'x'.repeat(201) }), /at most 200 characters/);
    await assert.rejects(task.defer({}, { group: 7 as never }), /group 7 is invalid/);
    assert.equal(await count(`SELECT count(*)::int AS n FROM ${q}.queue_limits`), 0);
    assert.equal(await count(`SELECT count(*)::int AS n FROM ${q}.jobs`), 0);
    const ok = await task.defer({}, { group: 'example.com' });
    assert.ok(ok.enqueued);
    assert.equal((await t.app.jobs.show(ok.id))?.group, 'example.com');
  });

  it('configure, read back, remove one limit, clear: the row goes once nothing is left', async () => {
    await reset();
    const set = await t.app.queues.configure('mail', {
      concurrency: 3,
      groupConcurrency: 1,
      rate: { max: 60, per: { hours: 1 } },
    });
    assert.deepEqual(
      { c: set?.concurrency, g: set?.groupConcurrency, r: set?.rate, gr: set?.groupRate },
      { c: 3, g: 1, r: { max: 60, perMs: 3_600_000 }, gr: null },
    );
    const changed = await t.app.queues.configure('mail', { rate: null });
    assert.equal(changed?.rate, null);
    assert.equal(changed?.concurrency, 3, 'a field left out keeps its value');
    assert.equal(
      await t.app.queues.configure('mail', { concurrency: null, groupConcurrency: null }),
      undefined,
    );
    assert.equal(await count(`SELECT count(*)::int AS n FROM ${q}.queue_limits`), 0, 'nothing left: no row');
    await t.app.queues.configure('mail', { concurrency: 2 });
    assert.equal(await t.app.queues.clear('mail'), true);
    assert.equal(await t.app.queues.clear('mail'), false);
    assert.equal(
      await count(`SELECT count(*)::int AS n FROM ${q}.audit_log WHERE subject = 'queue:mail'`),
      5,
      'each change audited',
    );
  });

  it('the plain claim skips limited queues; the limited claim holds concurrency, group concurrency and goes round-robin', async () => {
    await reset();
    await deferJobs(6, 'mail', 'a.com');
    await deferJobs(2, 'mail', 'b.com');
    await deferJobs(1, 'mail', null);
    await deferJobs(3, 'other', null);
    await t.app.queues.configure('mail', { concurrency: 4, groupConcurrency: 1 });
    const request = (workerId: string, limit = 100) => ({
      queues: null,
      skipTasks: [],
      limit,
      workerId,
      now: null,
    });

    const plain = await claimJobs(t.pool, t.schema, request('w-plain'));
    assert.deepEqual(
      plain.map((job) => job.queue),
      ['other', 'other', 'other'],
      'no job of the limited queue',
    );
    const first = await claimLimitedJobs(t.pool, t.schema, request('w1'));
    assert.deepEqual(
      first.map((job) => job.group_key ?? '-').sort(),
      ['-', 'a.com', 'b.com'],
      'one per group',
    );
    const second = await claimLimitedJobs(t.pool, t.schema, request('w2'));
    assert.deepEqual(second, [], 'every group at its limit');
    // a.com's job finishes: one slot frees, for a.com (b.com and ungrouped are at their limits).
    await t.pool.query(`DELETE FROM ${q}.jobs WHERE id = $1`, [
      first.find((job) => job.group_key === 'a.com')!.id,
    ]);
    const third = await claimLimitedJobs(t.pool, t.schema, request('w3'));
    assert.deepEqual(
      third.map((job) => job.group_key),
      ['a.com'],
    );
    // Raise the group limit: the queue's own limit (4) now binds.
    await t.app.queues.configure('mail', { groupConcurrency: 10 });
    const fourth = await claimLimitedJobs(t.pool, t.schema, request('w4'));
    assert.equal(fourth.length, 1, 'queue concurrency 4: three running, one more');
    assert.equal(
      await count(`SELECT count(*)::int AS n FROM ${q}.jobs WHERE status = 'doing' AND queue = 'mail'`),
      4,
    );
  });

  it('rate limits: jobs over the limit stay todo, uncounted, and start when the window allows', async () => {
    await reset();
    await deferJobs(8, 'paced', 'g1');
    await deferJobs(8, 'paced', 'g2');
    await t.app.queues.configure('paced', {
      rate: { max: 5, per: { seconds: 10 } },
      groupRate: { max: 2, per: 10_000 },
    });
    const t0 = new Date(Date.now() + 60_000); // all jobs are due
    const at = (seconds: number) => ({
      queues: null,
      skipTasks: [],
      limit: 100,
      workerId: 'w',
      now: new Date(t0.getTime() + seconds * 1_000),
    });
    const claimed = async (seconds: number) => {
      const jobs = await claimLimitedJobs(t.pool, t.schema, at(seconds));
      await t.pool.query(`DELETE FROM ${q}.jobs WHERE id = ANY ($1::bigint[])`, [jobs.map((job) => job.id)]);
      return jobs.map((job) => job.group_key).sort();
    };
    assert.deepEqual(await claimed(0), ['g1', 'g1', 'g2', 'g2'], 'two per group (group rate), four of five');
    assert.deepEqual(await claimed(5), [], 'both groups spent their window');
    assert.equal(
      await count(
        `SELECT count(*)::int AS n FROM ${q}.jobs WHERE status = 'todo' AND attempts = 0 AND queue = 'paced'`,
      ),
      12,
      'the others wait: todo, no attempt counted, none failed',
    );
    assert.deepEqual(await claimed(10), ['g1', 'g1', 'g2', 'g2'], 'a new window');
    await t.app.queues.configure('paced', { groupRate: null });
    assert.deepEqual((await claimed(12)).length, 1, 'the queue window (5 per 10 s) has one left');
    assert.deepEqual((await claimed(20)).length, 5, 'then five per window');
    assert.deepEqual((await claimed(30)).length, 2, 'the last two');
  });

  it('three worker processes under load, one killed with SIGKILL mid-run: concurrency 3 and 2 per group never exceeded, every job runs', async () => {
    await reset();
    await t.app.queues.configure('mail', { concurrency: 3, groupConcurrency: 2 });
    await deferJobs(1, 'mail', 'a.com', { hang: true });
    for (const group of ['a.com', 'b.com', 'c.com']) await deferJobs(25, 'mail', group, { ms: 30 });
    const workers = [0, 1, 2].map(() => start(['--concurrency', '4']));
    await Promise.all(workers.map((worker) => workerStarted(t.pool, t.schema, worker)));
    const hung = await waitFor('the hanging job to start', async () => {
      const { rows } = await t.pool.query<{ pid: number }>(
        `SELECT r.pid FROM ${q}.lim_runs r JOIN ${q}.jobs j ON j.id = r.job_id WHERE j.args ? 'hang'`,
      );
      return rows[0];
    });
    const victim = workers.find((worker) => worker.child.pid === hung.pid)!;
    victim.child.kill('SIGKILL');
    await victim.exited;
    const deadAt = (await t.pool.query<{ at: Date }>('SELECT clock_timestamp() AS at')).rows[0]!.at;
    const survivors = workers.filter((worker) => worker !== victim);
    await waitFor(
      'every job to run, the hung one again after recovery',
      async () => (await count(`SELECT count(*)::int AS n FROM ${q}.jobs`)) === 0,
      60_000,
      async () => (await t.pool.query(`SELECT status, count(*) FROM ${q}.jobs GROUP BY status`)).rows,
    );
    // Runs of the killed worker that never ended stopped when it died.
    await t.pool.query(`UPDATE ${q}.lim_runs SET ended = $1 WHERE ended IS NULL AND pid = $2`, [
      deadAt,
      victim.child.pid,
    ]);
    assert.equal(await maxOverlap(false), 3, 'the queue ran 3 at once at most, and reached 3');
    assert.ok((await maxOverlap(true)) <= 2, 'a group ran 2 at once at most');
    assert.equal(
      await count(`SELECT count(DISTINCT job_id)::int AS n FROM ${q}.lim_runs`),
      76,
      'every job ran',
    );
    const hungRuns = (
      await t.pool.query<{ pid: number; attempt: number }>(
        `SELECT r.pid, r.attempt FROM ${q}.lim_runs r WHERE r.job_id = (
           SELECT job_id FROM ${q}.lim_runs WHERE pid = $1 AND attempt = 1 ORDER BY seq LIMIT 1) ORDER BY seq`,
        [victim.child.pid],
      )
    ).rows;
    assert.equal(hungRuns.length, 2, 'the killed run was recovered and ran again');
    assert.notEqual(hungRuns[1]!.pid, victim.child.pid);
    await stop(...survivors);
  });

  it('fairness: a group with a big backlog does not starve a small one (round-robin)', async () => {
    await reset();
    await t.app.queues.configure('mail', { concurrency: 2 });
    await deferJobs(150, 'mail', 'big', { ms: 2 });
    await deferJobs(5, 'mail', 'small', { ms: 2 });
    const worker = start(['--concurrency', '2']);
    await waitFor(
      'every small job to run',
      async () => (await count(`SELECT count(*)::int AS n FROM ${q}.lim_runs WHERE grp = 'small'`)) === 5,
      30_000,
    );
    await stop(worker);
    const ranks = (
      await t.pool.query<{ rank: number }>(
        `SELECT rank FROM (SELECT grp, row_number() OVER (ORDER BY started, seq)::int AS rank FROM ${q}.lim_runs) r
         WHERE grp = 'small' ORDER BY rank`,
      )
    ).rows.map((row) => row.rank);
    // Rounds of one job per group: the small group's k-th job starts in round k, i.e. by start 2k.
    assert.ok(ranks[4]! <= 12, `small jobs started at ${ranks.join(', ')} of 155`);
  });

  it('RateLimited: the job goes back uncounted and its queue, or only its group, waits until the retry time', async () => {
    await reset();
    const worker = start(['--concurrency', '4']);
    await workerStarted(t.pool, t.schema, worker);
    // A job without a group pauses its queue.
    await deferJobs(1, 'paced', null, { limitedFor: 1_500 });
    const limited = await waitFor('the rate-limited job to be back in todo', async () => {
      const { rows } = await t.pool.query(
        `SELECT j.id, j.status, j.attempts, j.run_at, l.paused_until FROM ${q}.jobs j
         JOIN ${q}.queue_limits l ON l.queue = j.queue WHERE j.status = 'todo'`,
      );
      return rows[0];
    });
    assert.equal(limited.attempts, 0, 'the attempt is not counted');
    assert.ok(
      limited.paused_until.getTime() >= limited.run_at.getTime() - 1,
      'the queue waits as long as the job',
    );
    await deferJobs(1, 'paced', null, { ms: 0 });
    await waitFor(
      'both jobs to run',
      async () => (await count(`SELECT count(*)::int AS n FROM ${q}.jobs`)) === 0,
    );
    assert.equal(
      await count(`SELECT count(*)::int AS n FROM ${q}.lim_runs WHERE what = 'ran' AND started < $1`, [
        limited.paused_until,
      ]),
      0,
      'nothing of the queue started during the pause',
    );

    // A job with a group pauses its group only.
    await t.pool.query(`TRUNCATE ${q}.lim_runs`);
    // Five seconds: the other group's jobs must start within the pause, even on a loaded machine.
    await deferJobs(1, 'grouped', 'slow.example', { limitedFor: 5_000 });
    const paused = await waitFor('the group to be paused', async () => {
      const { rows } = await t.pool.query(
        `SELECT paused_until FROM ${q}.queue_groups WHERE group_key = 'slow.example'`,
      );
      return rows[0]?.paused_until as Date | undefined;
    });
    const queueRow = await t.pool.query(`SELECT paused_until FROM ${q}.queue_limits WHERE queue = 'grouped'`);
    assert.equal(queueRow.rows[0]?.paused_until ?? null, null, 'the queue itself is not paused');
    await deferJobs(3, 'grouped', 'fast.example', { ms: 0 });
    await deferJobs(1, 'grouped', 'slow.example', { ms: 0 });
    await waitFor(
      'every job to run',
      async () => (await count(`SELECT count(*)::int AS n FROM ${q}.jobs`)) === 0,
    );
    assert.equal(
      await count(
        `SELECT count(*)::int AS n FROM ${q}.lim_runs WHERE what = 'ran' AND grp = 'slow.example' AND started < $1`,
        [paused],
      ),
      0,
      'the paused group waited',
    );
    assert.equal(
      await count(
        `SELECT count(*)::int AS n FROM ${q}.lim_runs WHERE what = 'ran' AND grp = 'fast.example' AND started < $1`,
        [paused],
      ),
      3,
      'the other group did not',
    );
    await stop(worker);
    assert.equal(await count(`SELECT count(*)::int AS n FROM ${q}.jobs WHERE status = 'failed'`), 0);
  });

  it('RateLimited reads a retryAfter duration, a Date, and a 429 response with Retry-After in seconds or as an HTTP date', () => {
    const now = Date.parse('2030-01-01T00:00:00Z');
    assert.equal(new RateLimited({ retryAfter: { seconds: 30 } }, now).retryAt, now + 30_000);
    assert.equal(new RateLimited({ retryAfter: 500 }, now).retryAt, now + 500);
    assert.equal(new RateLimited({ retryAfter: new Date(now + 7_000) }, now).retryAt, now + 7_000);
    const response = (status: number, retryAfter: string | null) => ({
      status,
      headers: { get: (name: string) => (name.toLowerCase() === 'retry-after' ? retryAfter : null) },
    });
    assert.equal(RateLimited.fromResponse(response(429, '120'), now).retryAt, now + 120_000);
    assert.equal(
      RateLimited.fromResponse(response(429, 'Tue, 01 Jan 2030 00:05:00 GMT'), now).retryAt,
      now + 300_000,
    );
    assert.equal(
      RateLimited.fromResponse(response(503, null), now).retryAt,
      now + 60_000,
      'no header: a minute',
    );
    assert.equal(asRateLimited(response(429, '2'), now)?.retryAt, now + 2_000, 'a thrown 429 response');
    assert.equal(asRateLimited(response(500, '2'), now), null, 'a 500 is an ordinary failure');
    assert.equal(asRateLimited(new Error('boom'), now), null);
    assert.throws(
      () => RateLimited.fromResponse(response(200, null), now),
      /expected a Response with status 429 or 503/,
    );
    assert.throws(() => new RateLimited({ retryAfter: -1 }, now), /retryAfter -1 is invalid/);
    assert.throws(() => new RateLimited({ retryAfter: { days: 2 } }, now), /expected at most a day/);
    assert.equal(parseRetryAfter('soon', now).getTime(), now + 60_000, 'unreadable: a minute');
    assert.equal(
      RateLimited.fromResponse(response(429, '999999'), now).retryAt,
      now + 86_400_000,
      'capped at a day',
    );
    const revoked = Proxy.revocable({}, {});
    revoked.revoke();
    assert.equal(asRateLimited(revoked.proxy, now), null, 'a revoked Proxy is an ordinary failure');
  });

  it('the CLI sets, shows and clears limits; bad input exits non-zero with one line and writes nothing', async () => {
    await reset();
    const env = { OUTBATCH_SCHEMA: t.schema };
    const set = await runCli(['queues', 'set', 'mail', '--concurrency', '3', '--group-rate', '10/1m'], env);
    assert.equal(set.code, 0, set.stderr);
    assert.match(set.stdout, /mail\s+3\s+-\s+-\s+10\/1m/);
    const shown = await runCli(['--json', 'queues', 'show', 'mail'], env);
    const json = JSON.parse(shown.stdout);
    assert.equal(json.concurrency, 3);
    assert.deepEqual(json.groupRate, { max: 10, perMs: 60_000 });
    for (const [args, message] of [
      [['--concurrency', '0'], /--concurrency "0" is invalid/],
      [['--rate', '10'], /--rate "10" is invalid: expected <max>\/<duration>/],
      [['--rate', '10/soon'], /--rate per "soon" is invalid/],
      [[], /at least one of --concurrency/],
    ] as const) {
      const bad = await runCli(['queues', 'set', 'other', ...args], env);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr.trim(), message);
      assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
    }
    assert.equal(await count(`SELECT count(*)::int AS n FROM ${q}.queue_limits WHERE queue = 'other'`), 0);
    const deferred = await runCli(['defer', 'counted', '--group', 'x.org', '--queue', 'mail'], env);
    assert.equal(deferred.code, 0, deferred.stderr);
    const listed = await runCli(['queues', 'list'], env);
    assert.match(listed.stdout, /mail\s+3\s+-\s+-\s+10\/1m\s+0\s+1/);
    assert.equal((await runCli(['queues', 'clear', 'mail'], env)).code, 0);
    assert.match((await runCli(['queues', 'list'], env)).stdout, /no queue has limits/);
  });

  it('the JSON API shows limits, and changes them only with the token', async () => {
    await reset();
    const server = await startAdminServer({ app: t.app, port: 0, token: 'limits-token-1' });
    try {
      const post = (path: string, token?: string) =>
        fetch(`${server.url}${path}`, {
          method: 'POST',
          headers: token ? { authorization: `Bearer ${token}` } : {},
        });
      const refused = await post('/api/queues/mail/limits?concurrency=3');
      assert.equal(refused.status, 401);
      assert.equal(await count(`SELECT count(*)::int AS n FROM ${q}.queue_limits`), 0);
      const bad = await post('/api/queues/mail/limits?concurrency=x', 'limits-token-1');
      assert.equal(bad.status, 400);
      assert.match(((await bad.json()) as { error: string }).error, /concurrency "x" is invalid/);
      const done = await post('/api/queues/mail/limits?concurrency=3&rate=60/1h', 'limits-token-1');
      assert.equal(done.status, 200);
      const paused = await post('/api/queues/mail/pause?for=10m', 'limits-token-1');
      assert.equal(paused.status, 200);
      const read = (await (await fetch(`${server.url}/api/queues`)).json()) as {
        queues: { queue: string; concurrency: number; rate: unknown; pausedUntil: string | null }[];
      };
      assert.equal(read.queues.length, 1);
      assert.equal(read.queues[0]!.concurrency, 3);
      assert.deepEqual(read.queues[0]!.rate, { max: 60, perMs: 3_600_000 });
      assert.ok(read.queues[0]!.pausedUntil);
      await deferJobs(1, 'mail', 'tenant-7');
      const page = (await (await fetch(`${server.url}/api/jobs?state=todo`)).json()) as {
        jobs: { id: string; group: string }[];
      };
      assert.equal(page.jobs[0]!.group, 'tenant-7', 'jobs carry their group');
      const one = (await (await fetch(`${server.url}/api/jobs/${page.jobs[0]!.id}`)).json()) as {
        job: { group: string };
      };
      assert.equal(one.job.group, 'tenant-7');
      assert.equal((await post('/api/queues/mail/clear', 'limits-token-1')).status, 200);
      assert.equal(await count(`SELECT count(*)::int AS n FROM ${q}.queue_limits`), 0);
    } finally {
      await server.close();
    }
  });
});

describe('queue limits under faults', () => {
  let proxy: FaultProxy;
  before(async () => {
    proxy = await startFaultProxy(databaseUrl());
  });
  after(async () => proxy.close());

  /** An app through the proxy whose worker runs `body`, recording each run in lim_runs. */
  async function withProxiedWorker(body: () => Promise<void>): Promise<void> {
    const app = createApp({ databaseUrl: proxy.url, schema: t.schema });
    app.task(
      'counted',
      { queue: 'mail', keepSucceededFor: { minutes: 5 } },
      async (args: { limitedFor?: number }, ctx) => {
        const { rows } = await t.pool.query<{ n: number }>(
          `INSERT INTO ${q}.lim_runs (job_id, queue, grp, pid, attempt, started)
         VALUES ($1, $2, $3, 0, $4, clock_timestamp())
         RETURNING (SELECT count(*)::int FROM ${q}.lim_runs WHERE job_id = $1) AS n`,
          [ctx.job.id, ctx.job.queue, ctx.job.group, ctx.job.attempt],
        );
        if (args.limitedFor !== undefined && rows[0]!.n === 0) {
          await t.pool.query(
            `UPDATE ${q}.lim_runs SET ended = clock_timestamp(), what = 'limited' WHERE job_id = $1`,
            [ctx.job.id],
          );
          throw new RateLimited({ retryAfter: args.limitedFor });
        }
        await t.pool.query(
          `UPDATE ${q}.lim_runs SET ended = clock_timestamp() WHERE job_id = $1 AND ended IS NULL`,
          [ctx.job.id],
        );
      },
    );
    await withRunningWorker(app, t.pool, t.schema, body, { concurrency: 3 });
  }

  it('a limited claim whose reply is lost: the jobs go back uncounted, the limit holds, each runs once', async () => {
    await reset();
    await t.app.queues.configure('mail', { concurrency: 1 });
    await deferJobs(4, 'mail', null);
    const { fired } = proxy.addRule({ match: 'outbatch_claim_limited', action: 'lose-reply' });
    await withProxiedWorker(async () => {
      await fired;
      await waitFor(
        'every job to succeed',
        async () =>
          (await count(`SELECT count(*)::int AS n FROM ${q}.jobs WHERE status = 'succeeded'`)) === 4,
      );
    });
    assert.equal(await count(`SELECT count(*)::int AS n FROM ${q}.lim_runs`), 4, 'each job ran once');
    assert.equal(
      await count(`SELECT count(*)::int AS n FROM ${q}.jobs WHERE attempts <> 1`),
      0,
      'the lost claim not counted',
    );
    assert.equal(await maxOverlap(false), 1, 'one at a time');
  });

  it('a rate-limited return whose reply is lost: written once, the job waits out the pause and runs, uncounted', async () => {
    await reset();
    await deferJobs(1, 'mail', null, { limitedFor: 1_000 });
    const { fired } = proxy.addRule({ match: 'postpone_jobs', action: 'lose-reply' });
    await withProxiedWorker(async () => {
      await fired;
      await waitFor(
        'the job to succeed',
        async () =>
          (await count(`SELECT count(*)::int AS n FROM ${q}.jobs WHERE status = 'succeeded'`)) === 1,
      );
    });
    const runs = (
      await t.pool.query<{ what: string; started: Date }>(
        `SELECT what, started FROM ${q}.lim_runs ORDER BY seq`,
      )
    ).rows;
    assert.deepEqual(
      runs.map((run) => run.what),
      ['limited', 'ran'],
    );
    const job = (await t.pool.query(`SELECT attempts, run_at FROM ${q}.jobs`)).rows[0];
    assert.equal(job.attempts, 1, 'the rate-limited run is not counted');
    assert.ok(runs[1]!.started.getTime() >= job.run_at.getTime(), 'it ran after the pause');
  });
});
