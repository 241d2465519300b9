/**
 * `app.processor(...)` and the processors' runtime wiring: each processor is a task
 * (`processor:<name>`) whose jobs run one version with lock `processor:<name>@<version>`,
 * so at most one run per version executes cluster-wide. Triggers only defer runs, with
 * a queueing lock, so a burst of triggers queues at most one run behind the current one.
 */
import type pg from 'pg';
import {
  auditTime,
  catchError,
  defer,
  EMPTY,
  exhaustMap,
  filter,
  merge,
  type Observable,
  retry,
  timer,
} from 'rxjs';
import type { Clock } from '../clock.js';
import { withOwnDeadline } from '../db/deadline.js';
import { listen } from '../db/listen.js';
import type { Queryable } from '../db/queryable.js';
import type { Reads } from '../db/readReplica.js';
import { ArchivedEventsError, ValidationError } from '../errors.js';
import { eventsChannel } from '../events/follow.js';
import type { ReadOptions, ReadPage } from '../events/read.js';
import type { Upcasters } from '../events/upcast.js';
import type { JobQueue } from '../jobs/queue.js';
import type { Logger } from '../log.js';
import type { ScheduleRegistry } from '../schedule/registry.js';
import type { Tracing } from '../trace/tracing.js';
import {
  defineProcessor,
  type Pipeline,
  type ProcessorDefinition,
  type ProcessorOptions,
} from './definition.js';
import {
  HELD_BACK_MAX_MS,
  HELD_RUNS_BEFORE_LOG,
  heldBackDelayMs,
  heldBackStreak,
  heldRunsOf,
} from './heldBack.js';
import { processorLock, processorTask } from './names.js';
import { runProcessor } from './run.js';
import { ensureProcessor, oldestOpenTransaction, runnableVersions } from './store.js';

/** Processor runs jump ahead of ordinary jobs (default priority 0). */
const PROCESSOR_PRIORITY = 1_000;

/** How often onAppend processors are also triggered without a NOTIFY (a missed one, a restart). */
const SAFETY_POLL_MS = 30_000;

/** A trigger that could not defer its runs (database busy or away) tries again after 250 ms, doubling up to 5 s. */
const TRIGGER_RETRY_MS = { initial: 250, max: 5_000 };

export interface ProcessorDeps {
  schema: string;
  q: string;
  log: Logger;
  clock: Clock;
  pool: () => Promise<pg.Pool>;
  /** Where pages are read: with `readUrl`, a replica, outside the page's transaction. */
  reads: () => Promise<Reads>;
  /** Pages as stored (on the read pool): each run upcasts its pages itself, see run.ts. */
  readStored(options: ReadOptions, queryTimeoutMs?: number): Promise<ReadPage>;
  upcasters: Upcasters;
  queue: JobQueue;
  schedules: ScheduleRegistry;
  tracing: Tracing;
}

/** A run's job arguments: the version, and how many runs in a row before it were held back. */
interface RunArgs {
  version: number;
  heldRuns?: number;
}

export function makeProcessors(deps: ProcessorDeps) {
  const definitions = new Map<string, ProcessorDefinition>();

  /**
   * Defers one run of one version (deduped by the queueing lock: a run already waiting
   * absorbs this one, and keeps its own delay and arguments).
   */
  async function deferRun(
    def: ProcessorDefinition,
    db: Queryable,
    args: RunArgs,
    delayMs?: number,
  ): Promise<string> {
    const lock = processorLock(def.name, args.version);
    const result = await deps.queue.defer(processorTask(def.name), args, {
      client: db,
      lock,
      queueingLock: lock,
      onConflict: 'ignore',
      queue: def.queue,
      delay: delayMs,
    });
    return result.enqueued ? result.id : result.existingId;
  }

  /** Defers one run per running version. */
  async function deferRuns(name: string, client?: Queryable): Promise<string | null> {
    const def = definitions.get(name)!;
    // On the pool these are outbatch's own statements: a trigger hung on a half-open
    // connection would hold the exhaustMap below, and every later trigger with it.
    const db = client ?? withOwnDeadline(await deps.pool());
    let first: string | null = null;
    for (const version of await runnableVersions(db, deps.q, name)) {
      const id = await deferRun(def, db, { version });
      first ??= id;
    }
    return first;
  }

  /**
   * Newer events are held back by an open transaction, and their NOTIFY is spent: look
   * again, sooner than the safety poll but later each time the hold persists (see
   * heldBack.ts), and say so once per hold, when it has lasted long enough to matter.
   */
  async function onHeldBack(
    def: ProcessorDefinition,
    args: RunArgs,
    processed: number,
    log: Logger,
    by: 'transaction' | 'replica',
  ) {
    // outbatch's own statements: a hung one would leave the run job doing for good.
    const pool = withOwnDeadline(await deps.pool());
    const streak = heldBackStreak(heldRunsOf(args), processed);
    const delayMs = heldBackDelayMs(streak);
    if (streak === HELD_RUNS_BEFORE_LOG && by === 'replica') {
      // Same backoff as an open transaction: the replica's lag is the wait, and the
      // primary's NOTIFY for those events is spent.
      log.warn(
        { processor: def.name, version: args.version, heldRuns: streak },
        `processor "${def.name}" waits for the replica at readUrl: the primary has newer events it has not replayed yet; looking again every ${HELD_BACK_MAX_MS / 1000} s at most`,
      );
    } else if (streak === HELD_RUNS_BEFORE_LOG) {
      // Only to name the holder in the log: failing to find it must not fail the run.
      const oldest = await oldestOpenTransaction(pool).catch(() => null);
      const holder =
        oldest === null
          ? 'could not look it up'
          : oldest === undefined
            ? 'no session holds one: a prepared transaction?'
            : `pid ${oldest.pid}${oldest.ageSeconds === null ? '' : `, open ${oldest.ageSeconds} s`}`;
      log.warn(
        {
          processor: def.name,
          version: args.version,
          // Not `pid`: pino's own field, the worker's process.
          holderPid: oldest?.pid,
          holderAgeSeconds: oldest?.ageSeconds,
          heldRuns: streak,
        },
        `processor "${def.name}" is held back by an open transaction (${holder}): its newer events wait until it ends; looking again every ${HELD_BACK_MAX_MS / 1000} s at most`,
      );
    }
    await deferRun(def, pool, { version: args.version, heldRuns: streak }, delayMs);
  }

  function define(name: string, options: ProcessorOptions, pipeline: Pipeline) {
    const def = defineProcessor(name, options, pipeline);
    if (definitions.has(def.name)) {
      throw new ValidationError(
        `processor "${def.name}" is defined twice: processor names are unique per app`,
      );
    }
    deps.queue.task<RunArgs>(
      processorTask(def.name),
      {
        queue: def.queue,
        // Runs are short and everything downstream waits on them: claim them before a job
        // backlog (workers claim by priority, then due time).
        priority: PROCESSOR_PRIORITY,
        // The poison budget is counted per event on the processor row; the job only spaces the runs.
        retry: {
          attempts: 1_000,
          backoff: { initial: def.backoff.initialMs, factor: def.backoff.factor, max: def.backoff.maxMs },
        },
        onStall: 'retry',
      },
      async (args, ctx) => {
        const pool = await deps.pool();
        const reads = await deps.reads();
        const outcome = await runProcessor(
          {
            pool,
            q: deps.q,
            log: deps.log,
            clock: deps.clock,
            read: deps.readStored,
            upcasters: deps.upcasters,
            pageReads: reads.separate ? 'replica' : 'in-transaction',
            tracing: deps.tracing,
          },
          def,
          args.version,
          ctx.signal,
        ).catch((error: unknown) => {
          // Not the database failing: the checkpoint is below the archived horizon, and
          // every retry fails the same until an operator moves it; said as an error.
          if (error instanceof ArchivedEventsError) ctx.log.error({ processor: def.name }, error.message);
          throw error;
        });
        ctx.log.debug({ processor: def.name, version: args.version, ...outcome }, 'processor run finished');
        // Out of time but not at the head: queue the continuation (it waits for our lock).
        if (outcome.stopped === 'budget') await deferRuns(def.name);
        if (outcome.stopped === 'held' || outcome.stopped === 'replica') {
          const by = outcome.stopped === 'held' ? 'transaction' : 'replica';
          await onHeldBack(def, args, outcome.processed, ctx.log, by);
        } else if (heldRunsOf(args) >= HELD_RUNS_BEFORE_LOG) {
          ctx.log.info(
            { processor: def.name, version: args.version, heldRuns: heldRunsOf(args) },
            `processor "${def.name}" reads on: what held it back (an open transaction, or the replica) has passed`,
          );
        }
      },
    );
    definitions.set(def.name, def);
    if (def.schedule) {
      deps.schedules.add({
        schedule: def.schedule,
        task: processorTask(def.name),
        enqueue: (client) => deferRuns(def.name, client),
      });
    }
    return { name: def.name, runNow: () => deferRuns(def.name) };
  }

  /**
   * What a worker starts beside the job loop: records every processor, defers a first
   * run of each (catching up after downtime), and wakes onAppend processors on the
   * append NOTIFY — auditTime: at most one trigger per debounce window, however busy.
   */
  async function start(url: string | undefined): Promise<Observable<unknown>> {
    const pool = await deps.pool();
    if (definitions.size > 0) {
      // A readUrl that is no replica of this primary fails the start in one line, not every
      // run; a replica that is only down does not hold up jobs: runs retry until it is back.
      await deps.reads().catch((error: unknown) => {
        if (error instanceof ValidationError) throw error;
        deps.log.warn(
          { err: error },
          'the readUrl replica cannot be reached: processor runs retry until it can',
        );
      });
    }
    for (const def of definitions.values()) {
      await ensureProcessor(pool, deps.q, def.name, def.types, def.streamPrefix);
      await deferRuns(def.name);
    }
    const onAppend = [...definitions.values()].filter((def) => def.onAppendDebounceMs !== null);
    if (onAppend.length === 0) return EMPTY;
    const debounce = Math.min(...onAppend.map((def) => def.onAppendDebounceMs!));
    const trigger = () => Promise.all(onAppend.map((def) => deferRuns(def.name)));
    return merge(
      listen({ url, channels: [eventsChannel(deps.schema)], log: deps.log }).pipe(
        filter((note) => note.kind === 'notification' || note.kind === 'connected'),
        catchError((error) => {
          deps.log.error(
            { err: error },
            'LISTEN for appends failed for good; processors wake by polling only',
          );
          return EMPTY;
        }),
      ),
      timer(SAFETY_POLL_MS, SAFETY_POLL_MS),
    ).pipe(
      auditTime(debounce),
      // exhaustMap: a trigger still deferring absorbs the next wake; its runs will see those events.
      // A failed trigger is retried, not dropped: its append's NOTIFY is spent, and the
      // next wake-up might be the safety poll, 30 s away.
      exhaustMap(() =>
        defer(() => trigger()).pipe(
          retry({
            delay: (error, count) => {
              const delayMs = Math.min(TRIGGER_RETRY_MS.max, TRIGGER_RETRY_MS.initial * 2 ** (count - 1));
              deps.log.warn({ err: error, retryInMs: delayMs }, 'could not trigger processors; trying again');
              return timer(delayMs);
            },
          }),
        ),
      ),
    );
  }

  return {
    define,
    start,
    deferRuns,
    definitions: () => [...definitions.values()],
  };
}

export type Processors = ReturnType<typeof makeProcessors>;
