/**
 * Prometheus metrics (names fixed by ops/monitoring). Database-wide gauges are read on
 * scrape, from one snapshot shared by every gauge of that scrape; job counters and the
 * duration histogram count what this process's worker ran (fed by `observeJob`).
 */
import type { Logger } from 'pino';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { errorMessage } from '../errors.js';
import type { EventLogStatus } from '../events/logStatus.js';
import type { TaskWithoutWorker } from '../jobs/inspect.js';
import type { ReplicaView } from '../processors/replicaStatus.js';
import type { ProcessorStatus } from '../processors/status.js';
import type { JobFinished } from '../worker/options.js';
import type { JobCount, OldestTransaction } from './queries.js';
import type { ScheduleView } from './schedules.js';

/** The states `outbatch_jobs` reports (kept succeeded rows are not a state operators alert on). */
const GAUGE_STATES = ['todo', 'scheduled', 'doing', 'dirty', 'failed', 'cancelled'] as const;

export interface MetricsSnapshot {
  jobs: JobCount[];
  processors: ProcessorStatus[];
  headPosition: bigint;
  workersAlive: number;
  schedules: ScheduleView[];
  oldestTransaction: OldestTransaction | null;
  withoutWorker: TaskWithoutWorker[];
  /** With readUrl: the replica's lag. */
  readReplica?: ReplicaView;
  eventLog: EventLogStatus;
}

export interface Metrics {
  registry: Registry;
  /** The worker's hook: one call per finished job. */
  observeJob(event: JobFinished): void;
}

export function makeMetrics(deps: { snapshot: () => Promise<MetricsSnapshot>; log: Logger }): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const { log } = deps;

  // One snapshot per scrape: the registry runs the gauges' collect() concurrently, and
  // they share the read in flight; the next scrape reads again.
  let current: { done?: number; value: Promise<MetricsSnapshot | null> } | undefined;
  let failing = false;
  const snapshot = () => {
    if (!current || current.done !== undefined) {
      const entry: { done?: number; value: Promise<MetricsSnapshot | null> } = {
        value: Promise.resolve(null),
      };
      const value = deps.snapshot().then(
        (snap) => {
          if (failing) log.info('metrics: database readable again');
          failing = false;
          return snap;
        },
        (error: unknown) => {
          // Logged once per outage; the gauges go absent so alerts see no stale values.
          if (!failing) log.warn({ error: errorMessage(error) }, 'metrics: reading the database failed');
          failing = true;
          return null;
        },
      );
      entry.value = value.finally(() => {
        entry.done = Date.now();
      });
      current = entry;
    }
    return current.value;
  };

  const seenQueues = new Set<string>();
  new Gauge({
    name: 'outbatch_jobs',
    help: 'Jobs by derived state and queue (scaled from a capped sample past 5000 rows per status)',
    labelNames: ['state', 'queue'],
    registers: [registry],
    async collect() {
      this.reset();
      const snap = await snapshot();
      if (!snap) return;
      const sums = new Map<string, number>();
      for (const row of snap.jobs) {
        seenQueues.add(row.queue);
        const key = `${row.state}\u0000${row.queue}`;
        sums.set(key, (sums.get(key) ?? 0) + row.count);
      }
      // Every state of every queue seen, zeros included, so `for:` clauses and deriv() see continuous series.
      for (const queue of seenQueues) {
        for (const state of GAUGE_STATES) this.set({ state, queue }, sums.get(`${state}\u0000${queue}`) ?? 0);
      }
    },
  });

  const perVersion = (
    name: string,
    help: string,
    value: (p: ProcessorStatus) => number | undefined,
  ): Gauge<'processor' | 'version'> =>
    new Gauge({
      name,
      help,
      labelNames: ['processor', 'version'],
      registers: [registry],
      async collect() {
        this.reset();
        const snap = await snapshot();
        for (const p of snap?.processors ?? []) {
          const v = value(p);
          if (p.state === 'retired' || v === undefined) continue;
          this.set({ processor: p.name, version: String(p.version) }, v);
        }
      },
    });
  perVersion(
    'outbatch_processor_lag_events',
    'Matching events after the checkpoint (capped at 1e6)',
    (p) => p.lagEvents,
  );
  perVersion(
    'outbatch_processor_lag_seconds',
    'Age of the oldest unprocessed matching event',
    (p) => p.lagSeconds,
  );
  perVersion('outbatch_processor_failed', '1 when halted on a poison event', (p) =>
    p.state === 'failed' ? 1 : 0,
  );
  perVersion('outbatch_processor_paused', '1 when paused by an operator', (p) =>
    p.state === 'paused' ? 1 : 0,
  );
  // With readUrl only (absent without it): a version that waits for the replica, and how far behind it is.
  perVersion(
    'outbatch_processor_waiting_for_replica',
    '1 when the primary has events the readUrl replica cannot read yet (absent without readUrl)',
    (p) => (p.readReplica ? (p.readReplica.waiting ? 1 : 0) : undefined),
  );
  new Gauge({
    name: 'outbatch_read_replica_lag_seconds',
    help: 'Age of the last transaction the readUrl replica replayed, while it has WAL to replay; 0 when caught up (absent without readUrl)',
    registers: [registry],
    async collect() {
      this.reset();
      const view = (await snapshot())?.readReplica;
      if (view) this.set(view.lagSeconds);
    },
  });

  const eventLogGauge = (name: string, help: string, value: (log: EventLogStatus) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      async collect() {
        this.reset();
        const snap = await snapshot();
        if (snap) this.set(value(snap.eventLog));
      },
    });
  eventLogGauge(
    'outbatch_events_log_bytes',
    'Size of the event log: every partition with its indexes and TOAST',
    (l) => l.bytes,
  );
  eventLogGauge(
    'outbatch_events_partitions',
    'Partitions of the event log, the default one included (0: not partitioned yet; see docs/event-log.md)',
    (l) => l.partitions.length,
  );
  eventLogGauge(
    'outbatch_events_overflow',
    'Events in events_overflow, the default partition: > 0 means partitions fell behind the appends (no worker ran)',
    (l) => l.overflowEvents,
  );
  eventLogGauge(
    'outbatch_events_archived_through_position',
    'Position of the archived horizon: events up to it were archived and dropped (0: nothing archived)',
    (l) => (l.archivedThrough === null ? 0 : Number(l.archivedThrough.split(':')[1])),
  );

  let lastHead: bigint | undefined;
  new Gauge({
    name: 'outbatch_events_head_position',
    help: 'Position of the newest event in the log',
    registers: [registry],
    async collect() {
      this.reset();
      const snap = await snapshot();
      if (snap) this.set(Number(snap.headPosition));
    },
  });
  // The head position itself, as a counter: positions only grow, so rate() is the append
  // rate and every process reports the same value (no per-process bookkeeping to lose).
  // Positions skipped by rolled-back appends count too: an upper bound, close in practice.
  new Counter({
    name: 'outbatch_events_appended_total',
    help: 'Events appended to the log (the head position, which only grows)',
    registers: [registry],
    async collect() {
      const snap = await snapshot();
      if (!snap) return;
      if (lastHead === undefined || snap.headPosition < lastHead) {
        this.reset();
        lastHead = 0n;
      }
      const delta = snap.headPosition - lastHead;
      if (delta > 0n) this.inc(Number(delta));
      lastHead = snap.headPosition;
    },
  });

  // Tasks reported once stay as 0 when known again, so an alert resolves on a value, not a gap.
  const seenOrphanTasks = new Set<string>();
  new Gauge({
    name: 'outbatch_jobs_without_worker',
    help: 'Due todo jobs of a task that no live worker lists (an older worker that claims every task counts as knowing it)',
    labelNames: ['task'],
    registers: [registry],
    async collect() {
      this.reset();
      const snap = await snapshot();
      if (!snap) return;
      const waiting = new Map(snap.withoutWorker.map((row) => [row.task, row.waiting]));
      for (const task of waiting.keys()) seenOrphanTasks.add(task);
      for (const task of seenOrphanTasks) this.set({ task }, waiting.get(task) ?? 0);
    },
  });

  new Gauge({
    name: 'outbatch_workers_alive',
    help: 'Workers whose heartbeat is within their stall timeout',
    registers: [registry],
    async collect() {
      this.reset();
      const snap = await snapshot();
      if (snap) this.set(snap.workersAlive);
    },
  });

  const perSchedule = (name: string, help: string, value: (s: ScheduleView) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['schedule'],
      registers: [registry],
      async collect() {
        this.reset();
        const snap = await snapshot();
        for (const s of snap?.schedules ?? []) if (!s.stale) this.set({ schedule: s.name }, value(s));
      },
    });
  perSchedule(
    'outbatch_schedule_lateness_seconds',
    'How late the schedule is: its overdue tick, or how late its last tick was enqueued',
    (s) => s.latenessSeconds,
  );
  perSchedule('outbatch_schedule_late', '1 when the schedule is more than a minute late', (s) =>
    s.late ? 1 : 0,
  );

  new Gauge({
    name: 'outbatch_oldest_transaction_age_seconds',
    help: 'Age of the oldest transaction holding a transaction id (it holds back gap-safe reads)',
    registers: [registry],
    async collect() {
      this.reset();
      const snap = await snapshot();
      if (snap) this.set(snap.oldestTransaction?.age_seconds ?? 0);
    },
  });

  const duration = new Histogram({
    name: 'outbatch_job_duration_seconds',
    help: 'Handler time of the jobs this process ran, every outcome',
    labelNames: ['task'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [registry],
  });
  const counter = (name: string, help: string) =>
    new Counter({ name, help, labelNames: ['task'], registers: [registry] });
  const outcomes = {
    succeeded: counter('outbatch_jobs_completed_total', 'Jobs this process completed'),
    retried: counter('outbatch_jobs_retried_total', 'Job attempts this process failed and scheduled again'),
    failed: counter('outbatch_jobs_failed_total', 'Jobs this process moved to the dead letter (failed)'),
  };

  return {
    registry,
    observeJob(event) {
      outcomes[event.outcome].inc({ task: event.task });
      duration.observe({ task: event.task }, event.durationMs / 1000);
    },
  };
}
