/**
 * The dashboard's JSON API (documented in docs/operations.md): reads need
 * nothing, actions need the token (checked by the server before they get here). Every
 * parameter is checked; a bad one is a 400 naming it.
 */
import type pg from 'pg';
import type { App } from '../app.js';
import type { Actor } from '../audit.js';
import { quoteSchema } from '../db/identifiers.js';
import { parseDurationText } from '../duration.js';
import { ValidationError } from '../errors.js';
import { eventLogStatus } from '../events/logStatus.js';
import { checkJobId } from '../jobs/control.js';
import { type JobState, jobsWithoutWorker, STATES } from '../jobs/inspect.js';
import { clearQueueLimits, listQueueLimits, pauseQueue, setQueueLimits } from '../jobs/limits.js';
import { cancelJobs, deleteJobs, explainSkipped, retryJobs } from '../jobs/operate.js';
import { checkLimits, parseLimitsText } from '../jobs/queueControl.js';
import { checkQueue } from '../jobs/validate.js';
import { replicaView, withReplicaView } from '../processors/replicaStatus.js';
import { processorStatus } from '../processors/status.js';
import { describeOrigin } from '../trace/origin.js';
import type { MetricsSnapshot } from './metrics.js';
import {
  countJobs,
  lastEventPosition,
  listBatchTasks,
  listJobPage,
  listWorkers,
  type OldestTransaction,
  oldestTransaction,
  throughput,
} from './queries.js';
import { scheduleViews } from './schedules.js';

export type Query = URLSearchParams;

/** Only these parameters, each at most once: a typo is a 400, not a silently ignored filter. */
function checkParams(query: Query, allowed: string[]): void {
  for (const key of new Set(query.keys())) {
    if (!allowed.includes(key)) {
      throw new ValidationError(
        `unknown parameter "${key}": expected ${allowed.length ? allowed.join(', ') : 'none'}`,
      );
    }
    if (query.getAll(key).length > 1) throw new ValidationError(`parameter "${key}" is given twice`);
  }
}

function integerParam(query: Query, name: string, min: number, max: number, fallback: number): number {
  const text = query.get(name);
  if (text === null) return fallback;
  if (!/^\d{1,9}$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new ValidationError(
      `${name} ${JSON.stringify(text)} is invalid: expected an integer from ${min} to ${max}`,
    );
  }
  return Number(text);
}

function stateParam(query: Query): JobState {
  const state = query.get('state');
  if (state === null) {
    throw new ValidationError(`state is required: expected one of ${STATES.join(', ')}`);
  }
  if (!STATES.includes(state as JobState)) {
    throw new ValidationError(
      `state ${JSON.stringify(state)} is invalid: expected one of ${STATES.join(', ')}`,
    );
  }
  return state as JobState;
}

function nameParam(query: Query, name: string): string | undefined {
  const value = query.get(name);
  if (value === null) return undefined;
  if (value === '' || value.length > 200) {
    throw new ValidationError(`${name} ${JSON.stringify(value)} is invalid: expected 1 to 200 characters`);
  }
  return value;
}

/**
 * Another session's query text can hold personal data or secrets in literals, and this
 * view is cluster-wide: without the action token it is withheld, the rest stays visible.
 */
function withQuery(tx: OldestTransaction | null, showQueries: boolean) {
  if (!tx) return null;
  if (showQueries || tx.query === null) return { ...tx, queryHidden: false };
  return { ...tx, query: null, queryHidden: true };
}

/** `reads` serves every read; actions write through the app's own pool. */
export function makeApi(app: App, reads: () => Promise<pg.Pool>) {
  const q = quoteSchema(app.schema);
  const pool = reads;
  const writes = async (): Promise<pg.Pool> => (await app.database()).pool;

  const api = {
    async counts() {
      const counts = await countJobs(await pool(), q, app.schema);
      return { counts, estimated: counts.some((c) => c.estimated) };
    },
    async jobs(query: Query) {
      checkParams(query, ['state', 'queue', 'task', 'before', 'limit']);
      const state = stateParam(query);
      const before = query.get('before');
      const limit = integerParam(query, 'limit', 1, 200, 50);
      const jobs = await listJobPage(await pool(), q, {
        state,
        queue: nameParam(query, 'queue'),
        task: nameParam(query, 'task'),
        before: before === null ? undefined : checkJobId(before),
        limit,
      });
      // The next page starts below the last id shown; none when this page was not full.
      return {
        jobs: jobs.map((job) => ({ ...job, caused_by: describeOrigin(job.origin) ?? null })),
        next: jobs.length === limit ? jobs[jobs.length - 1]!.id : null,
      };
    },
    async job(id: string) {
      const job = await app.jobs.show(checkJobId(id));
      return job ?? null;
    },
    async workers() {
      return { workers: await listWorkers(await pool(), q) };
    },
    async batchTasks() {
      return { batchTasks: await listBatchTasks(await pool(), q) };
    },
    async schedules() {
      return { schedules: await scheduleViews(await pool(), q) };
    },
    async processors() {
      const statuses = await processorStatus(await pool(), q);
      // With readUrl the rows are the replica's: say how far behind it is, and who waits for it.
      if (!(await app.reads()).separate) return { processors: statuses };
      return { processors: await withReplicaView(statuses, await writes(), await pool(), q) };
    },
    async throughput(query: Query) {
      checkParams(query, ['minutes']);
      const minutes = integerParam(query, 'minutes', 1, 1440, 60);
      return { minutes: await throughput(await pool(), q, minutes) };
    },
    async oldestTransaction(options: { showQueries: boolean }) {
      // On the primary even with readUrl: its open transactions hold back every horizon,
      // the replica's too (it replays them); a replica's own sessions hold back none.
      return { oldestTransaction: withQuery(await oldestTransaction(await writes()), options.showQueries) };
    },
    /** Tasks with due jobs that no live worker knows (migration 024's workers.tasks). */
    async withoutWorker() {
      return { withoutWorker: await jobsWithoutWorker(await pool(), app.schema) };
    },
    async head() {
      const [last, head] = await Promise.all([lastEventPosition(await pool(), q), app.events.head()]);
      return {
        headPosition: last.toString(),
        gapSafeHeadPosition: head.position.toString(),
        gapSafeHeadCheckpoint: head.checkpoint,
      };
    },
    /** The log's partitions, size and archived horizon (catalog estimates: no count over the log). */
    async eventLog() {
      const status = await eventLogStatus(await pool(), app.schema);
      return {
        layout: status.layout,
        bytes: status.bytes,
        estimatedEvents: status.estimatedEvents,
        partitionSize: status.partitionSize,
        partitionsAhead: status.partitionsAhead,
        reachedPosition: status.reachedPosition.toString(),
        archivedThrough: status.archivedThrough,
        overflowEvents: status.overflowEvents,
        partitions: status.partitions.map((p) => ({
          name: p.name,
          lower: p.lower?.toString() ?? null,
          upper: p.upper?.toString() ?? null,
          estimatedEvents: p.estimatedEvents,
          bytes: p.bytes,
        })),
      };
    },
    /** Everything the page shows but the job lists, in one round trip. */
    async overview(options: { showQueries: boolean }) {
      const [
        counts,
        workers,
        schedules,
        processors,
        minutes,
        oldest,
        head,
        orphaned,
        eventLog,
        batchTasks,
        queues,
      ] = await Promise.all([
        api.counts(),
        api.workers(),
        api.schedules(),
        api.processors(),
        api.throughput(new URLSearchParams()),
        api.oldestTransaction(options),
        api.head(),
        api.withoutWorker(),
        api.eventLog(),
        api.batchTasks(),
        api.queues(),
      ]);
      return {
        generatedAt: new Date(),
        schema: app.schema,
        jobs: counts,
        ...workers,
        ...schedules,
        ...processors,
        throughput: minutes.minutes,
        ...oldest,
        events: head,
        eventLog,
        ...orphaned,
        ...batchTasks,
        ...queues,
      };
    },
    /** What /metrics reads on each scrape. */
    async metricsSnapshot(): Promise<MetricsSnapshot> {
      const db = await pool();
      const reads = await app.reads();
      const [jobs, processors, head, workers, schedules, oldest, orphaned, readReplica, eventLog] =
        await Promise.all([
          countJobs(db, q, app.schema),
          api.processors().then((result) => result.processors),
          lastEventPosition(db, q),
          listWorkers(db, q),
          scheduleViews(db, q),
          // The primary's, as on the page: its open transactions hold back every horizon.
          oldestTransaction(await writes()),
          jobsWithoutWorker(db, app.schema),
          reads.separate ? replicaView(await writes(), db) : undefined,
          eventLogStatus(db, app.schema),
        ]);
      return {
        readReplica,
        eventLog,
        jobs,
        processors,
        headPosition: head,
        workersAlive: workers.filter((w) => w.alive).length,
        schedules,
        oldestTransaction: oldest,
        withoutWorker: orphaned,
      };
    },

    async jobAction(action: 'retry' | 'cancel' | 'delete', id: string, by: Actor) {
      const ids = [checkJobId(id)];
      const db = await writes();
      type Outcome = { done: string[]; skipped: { id: string; reason: string }[] };
      const changed = async (done: Promise<string[]>): Promise<Outcome> => ({
        done: await done,
        skipped: [],
      });
      const run = {
        retry: async (): Promise<Outcome> => {
          const { retried, skipped } = await retryJobs(db, app.schema, { ids }, by);
          return { done: retried, skipped };
        },
        cancel: () => changed(cancelJobs(db, app.schema, ids, by)),
        delete: () => changed(deleteJobs(db, app.schema, ids, by)),
      };
      const outcome = await run[action]();
      const done = outcome.done;
      // A retry skipped for its queueing lock says why; anything else left alone, by its state.
      const reasons = new Map(outcome.skipped.map((skip) => [skip.id, skip.reason]));
      if (done.length === 0 && reasons.size === 0) {
        for (const [id, reason] of await explainSkipped(db, app.schema, ids)) reasons.set(id, reason);
      }
      app.log.info(
        {
          component: 'dashboard',
          action: `jobs.${action}`,
          jobId: ids[0],
          by: by.actor,
          host: by.host,
          done: done.length > 0,
        },
        `dashboard: ${action} job ${ids[0]}`,
      );
      return {
        done,
        skipped: ids
          .filter((i) => !done.includes(i))
          .map((i) => ({ id: i, reason: reasons.get(i) ?? 'unknown' })),
      };
    },
    /** Queue limits and pauses (docs/limits.md), with running and waiting jobs per limited queue. */
    async queues() {
      return { queues: await listQueueLimits(await pool(), app.schema) };
    },
    /**
     * `limits` takes concurrency, groupConcurrency, rate, groupRate as parameters (`60/1h`,
     * `none` removes one); `pause` takes `for` (a duration); `resume` and `clear` none.
     */
    async queueAction(
      action: 'limits' | 'pause' | 'resume' | 'clear',
      queue: string,
      query: Query,
      by: Actor,
    ) {
      const name = checkQueue(queue);
      const db = await writes();
      if (action === 'limits') {
        checkParams(query, ['concurrency', 'groupConcurrency', 'rate', 'groupRate']);
        const text = Object.fromEntries(query.entries());
        const change = checkLimits(
          parseLimitsText(text, {
            concurrency: 'concurrency',
            groupConcurrency: 'groupConcurrency',
            rate: 'rate',
            groupRate: 'groupRate',
          }),
        );
        const limits = await setQueueLimits(db, app.schema, name, change, by);
        app.log.info(
          { component: 'dashboard', action: 'queues.limits', queue: name, by: by.actor },
          `dashboard: limits of queue ${name} set`,
        );
        return { queue: name, limits: limits ?? null };
      }
      if (action === 'pause') {
        checkParams(query, ['for']);
        const text = query.get('for');
        if (text === null)
          throw new ValidationError('pause needs the parameter "for": a duration such as 10m');
        await pauseQueue(db, app.schema, name, new Date(Date.now() + parseDurationText(text, 'for')), by);
      } else {
        checkParams(query, []);
        if (action === 'resume') await pauseQueue(db, app.schema, name, null, by);
        else await clearQueueLimits(db, app.schema, name, by);
      }
      app.log.info(
        { component: 'dashboard', action: `queues.${action}`, queue: name, by: by.actor },
        `dashboard: ${action} queue ${name}`,
      );
      return { queue: name, limits: (await listQueueLimits(db, app.schema, name))[0] ?? null };
    },
    async processorAction(action: 'pause' | 'resume', name: string, by: Actor) {
      if (name === '' || name.length > 200) {
        throw new ValidationError(
          `processor name ${JSON.stringify(name)} is invalid: expected 1 to 200 characters`,
        );
      }
      return { processor: name, ...(await app.processors[action](name, by)) };
    },
  };
  return api;
}

export type Api = ReturnType<typeof makeApi>;
