/**
 * One run of one processor version: pages of events after the checkpoint, each pushed
 * through the pipeline inside a transaction that also moves the checkpoint. The next
 * page is read only after the pipeline drained the last (backpressure), so memory
 * holds one page however far behind the processor is.
 */
import type pg from 'pg';
import { defaultIfEmpty, from, fromEvent, lastValueFrom, takeUntil } from 'rxjs';
import type { Clock } from '../clock.js';
import { ownDeadline, underDeadline, withOwnDeadline } from '../db/deadline.js';
import type { Queryable } from '../db/queryable.js';
import { isRetryable } from '../db/retryable.js';
import { withTransaction } from '../db/transaction.js';
import { errorMessage } from '../errors.js';
import {
  type Checkpoint,
  type CheckpointParts,
  laterCheckpoint,
  parseCheckpoint,
} from '../events/checkpoint.js';
import type { ReadOptions, ReadPage } from '../events/read.js';
import type { StoredEvent } from '../events/storedEvent.js';
import { UpcastError, type Upcasters } from '../events/upcast.js';
import type { Logger } from '../log.js';
import { type Origin, originOfEvent } from '../trace/origin.js';
import { validTraceparent, validTracestate } from '../trace/traceContext.js';
import type { Tracing } from '../trace/tracing.js';
import type { ProcessorDefinition } from './definition.js';
import { checkBelowPrimaryHorizon, pageOnPrimary } from './replicaReads.js';
import {
  deadLetter,
  eventsAfter,
  haltVersion,
  lockVersion,
  recordFailure,
  saveCheckpoint,
  type VersionRow,
} from './store.js';

export interface RunDeps {
  pool: pg.Pool;
  q: string;
  log: Logger;
  clock: Clock;
  /**
   * Events as stored (not upcast). `queryTimeoutMs`: the page reads are outbatch's own
   * statements, abandoned after it.
   */
  read(options: ReadOptions, queryTimeoutMs?: number): Promise<ReadPage>;
  /** Applied to each page before the pipeline, where a failure counts against its event. */
  upcasters: Upcasters;
  /**
   * Where pages are read: in the page's transaction on the primary, or (`readUrl`) on the
   * read pool, a replica, with the checkpoint still saved in the page's transaction
   * (replicaReads.ts says why that is safe).
   */
  pageReads: 'in-transaction' | 'replica';
  /** What a page names as the cause of what its pipeline writes through ctx.tx; and its span. */
  tracing?: Tracing;
}

/**
 * `held`: at the gap-safe head, newer events held back by an open transaction;
 * `replica`: at the replica's head, newer events readable on the primary already.
 */
export type RunOutcome =
  | {
      stopped: 'head' | 'held' | 'replica' | 'budget' | 'paused' | 'failed' | 'retired' | 'aborted';
      processed: number;
    }
  | { stopped: 'halted'; processed: number; position: bigint };

/** A pipeline failure on known events, as opposed to the database failing under us. */
class PageFailed extends Error {
  constructor(
    readonly events: StoredEvent[],
    readonly failure: unknown,
  ) {
    super(errorMessage(failure), { cause: failure });
  }
}

class Aborted extends Error {}

/** The version's row changed under the page (a rewind, pause or halt): the page rolls back. */
class RowChanged extends Error {}

export async function runProcessor(
  deps: RunDeps,
  def: ProcessorDefinition,
  version: number,
  signal: AbortSignal,
): Promise<RunOutcome> {
  const log = deps.log.child({ component: 'processor', processor: def.name, version });
  const deadline = deps.clock.now().getTime() + def.maxRunTimeMs;
  let processed = 0;
  let pageSize = def.batchSize;
  // After a failed page: one event per page through its last event, to find the failing one.
  let isolateThrough: CheckpointParts | undefined;
  // The version's row as this run's last page left it; undefined: lock and read it again.
  let known: VersionRow | undefined;
  // The next page, read while the last one committed (see runPage).
  let next: Prefetch | undefined;
  const prefetch = (after: Checkpoint, limit: number) => {
    const page = deps.read(
      {
        after,
        types: def.types ?? undefined,
        streamPrefix: def.streamPrefix ?? undefined,
        limit,
        reader: `processor "${def.name}" reading`,
        processor: def.name,
      },
      ownDeadline(deps.pool),
    );
    page.catch(() => {}); // a failed read-ahead is read again in the page's transaction
    next = { after, limit, page };
  };
  while (true) {
    if (signal.aborted) return { stopped: 'aborted', processed };
    if (deps.clock.now().getTime() >= deadline) return { stopped: 'budget', processed };
    const ahead = next;
    next = undefined;
    let step: PageStep;
    try {
      step = await runPage(deps, def, version, known, pageSize, signal, log, ahead, prefetch);
    } catch (error) {
      if (error instanceof Aborted) return { stopped: 'aborted', processed };
      if (error instanceof RowChanged) {
        known = undefined;
        continue;
      }
      if (!(error instanceof PageFailed)) throw error; // the database: the job retries the run
      if (error.events.length > 1) {
        // Which event is it? Re-run the page one event at a time; those before it commit.
        log.warn(
          { err: error.failure, events: error.events.length },
          'page failed; isolating the failing event',
        );
        pageSize = 1;
        const last = error.events.at(-1)!;
        isolateThrough = { txId: last.txId, position: last.position };
        continue;
      }
      const outcome = await onEventFailure(deps, def, version, error.events[0]!, error.failure, log);
      if (outcome === 'retry') throw error.failure;
      if (outcome === 'halted') return { stopped: 'halted', processed, position: error.events[0]!.position };
      known = undefined;
      if (outcome === 'changed') continue;
      processed += 1; // skipped and dead-lettered; the checkpoint moved past it
      pageSize = def.batchSize;
      isolateThrough = undefined;
      continue;
    }
    if (step.kind === 'head' || (step.kind === 'page' && step.caughtUp)) {
      if (step.kind === 'page') processed += step.count;
      // At the replica's head while the primary has more: the replica lags (or holds an
      // older copy); the run is looked again at like a held one, its wake-up already spent.
      if (
        deps.pageReads === 'replica' &&
        (await eventsAfter(
          withOwnDeadline(deps.pool),
          deps.q,
          step.row.checkpoint,
          def.types,
          def.streamPrefix,
          {
            readableNow: true,
          },
        ))
      ) {
        return { stopped: 'replica', processed };
      }
      // At the gap-safe head, but newer events may be held back by an open transaction.
      const held = await eventsAfter(deps.pool, deps.q, step.row.checkpoint, def.types, def.streamPrefix, {
        readableNow: false,
      });
      return { stopped: held ? 'held' : 'head', processed };
    }
    // The replica's page is not the primary's yet (a rebase it has not replayed): wait for it.
    if (step.kind === 'stale') return { stopped: 'replica', processed };
    if (step.kind !== 'page') return { stopped: step.kind, processed };
    known = step.row;
    processed += step.count;
    // Past the failed page without a failure (it was the database, or a flaky effect): full pages again.
    if (isolateThrough) {
      const at = parseCheckpoint(step.row.checkpoint);
      if (laterCheckpoint(at, isolateThrough) === at) {
        isolateThrough = undefined;
        pageSize = def.batchSize;
      }
    }
  }
}

/** A page read ahead: the events after `after`, `limit` at most. */
interface Prefetch {
  after: Checkpoint;
  limit: number;
  page: Promise<ReadPage>;
}

/** `row`: the version's row as the page left it (its checkpoint is where the version now stands). */
type PageStep =
  | { kind: 'page'; count: number; caughtUp: boolean; row: VersionRow }
  | { kind: 'head'; row: VersionRow }
  | { kind: 'paused' | 'failed' | 'retired' | 'stale' };

/**
 * One page in one transaction: read after the checkpoint, the pipeline, the new checkpoint.
 * Only a run's first page locks the version's row; later pages start from the row as the
 * previous page left it, and saveCheckpoint checks that nothing changed it meanwhile (one
 * round trip less per page; a rewind or a pause in between rolls the page back).
 *
 * Once the pipeline has drained a full page, the next page is read on another connection
 * while this one saves the checkpoint and commits: Node parses the next rows while the
 * server flushes the commit. Still one page in the pipeline at a time, and the read-ahead
 * is used only if the next page starts where this one ends (the check on save makes that
 * safe: a gap-safe read below the snapshot's xmin never changes, and the checkpoint it
 * continues from is the one the next page's save must find).
 */
async function runPage(
  deps: RunDeps,
  def: ProcessorDefinition,
  version: number,
  known: VersionRow | undefined,
  limit: number,
  signal: AbortSignal,
  log: Logger,
  ahead: Prefetch | undefined,
  prefetch: (after: Checkpoint, limit: number) => void,
): Promise<PageStep> {
  // outbatch's own statements in the page (the lock, the read, the checkpoint) have the
  // pool's deadline; the pipeline's own statements on ctx.tx keep the caller's.
  const deadlineMs = ownDeadline(deps.pool);
  return withTransaction(deps.pool, async (tx) => {
    const own = <T>(fn: () => Promise<T>) => underDeadline(tx, deadlineMs, fn);
    const row = known ?? (await own(() => lockVersion(tx, deps.q, def.name, version)));
    if (!row) return { kind: 'retired' };
    if (row.failed) return { kind: 'failed' };
    if (row.paused) return { kind: 'paused' };
    const readAhead =
      known && ahead?.after === row.checkpoint && ahead.limit === limit
        ? await ahead.page.catch(() => undefined)
        : undefined;
    // On a replica the read is on the read pool, not in tx: what it returns is final all
    // the same (below the replica's own horizon), and the save below is still from
    // row.checkpoint, the checkpoint it read after. A lost reply or a refusal there (the
    // replica down, a recovery conflict) fails the page before anything was written: tx
    // rolls back and the run is retried.
    const page =
      readAhead ??
      (await deps.read(
        {
          after: row.checkpoint,
          types: def.types ?? undefined,
          streamPrefix: def.streamPrefix ?? undefined,
          limit,
          client: deps.pageReads === 'replica' ? undefined : tx,
          // Below the archived horizon (a new processor on an archived log) the read throws
          // ArchivedEventsError, naming the archive and the replay that starts after it.
          reader: `processor "${def.name}" reading`,
          processor: def.name,
        },
        deadlineMs,
      ));
    if (deps.pageReads === 'replica' && page.events.length > 0) {
      const [first, last] = [page.events[0]!, page.events.at(-1)!];
      if (!(await own(() => pageOnPrimary(tx, deps.q, first, last)))) return { kind: 'stale' };
    }
    if (page.events.length > 0) {
      upcastPage(deps.upcasters, page.events);
      try {
        const ctx = { tx, log, signal, processor: def.name, version };
        await applyTraced(deps.tracing, ctx, page.events, () => applyPipeline(def, page.events, ctx));
      } catch (error) {
        if (error instanceof Aborted) throw error;
        if (isRetryable(error)) throw error;
        throw new PageFailed(page.events, error);
      }
    }
    if (!page.caughtUp) prefetch(page.checkpoint, limit);
    if (page.checkpoint !== row.checkpoint) {
      if (deps.pageReads === 'replica') {
        await own(() => checkBelowPrimaryHorizon(tx, parseCheckpoint(page.checkpoint).txId));
      }
      const saved = await own(() =>
        saveCheckpoint(
          tx,
          deps.q,
          def.name,
          version,
          parseCheckpoint(row.checkpoint),
          parseCheckpoint(page.checkpoint),
          page.events.length,
          deps.clock.now(),
        ),
      );
      if (!saved) throw new RowChanged();
    }
    const after = { ...row, checkpoint: page.checkpoint };
    if (page.events.length === 0) return { kind: 'head', row: after };
    return { kind: 'page', count: page.events.length, caughtUp: page.caughtUp, row: after };
  });
}

/**
 * Brings the page to the current versions. An upcaster that fails on an event fails that
 * event, as the pipeline would: the events before it are re-run one at a time and commit,
 * then its retries and poison handling (halt or skip) apply. The skip's own read is of
 * stored events, so a dead-lettered event is not upcast again.
 */
function upcastPage(upcasters: Upcasters, events: StoredEvent[]): void {
  try {
    upcasters.apply(events);
  } catch (error) {
    if (!(error instanceof UpcastError)) throw error;
    const at = events.findIndex((event) => event.position === error.position);
    throw new PageFailed(events.slice(0, at + 1), error);
  }
}

/**
 * The pipeline with the page as the origin of what it writes through ctx.tx: jobs deferred
 * and events appended there name the processor and the page's first and last positions,
 * and continue the trace of the page's first traced event — through the page's span, with
 * OpenTelemetry (otel.ts says why that event's trace is the parent). Without it, finding
 * that event reads each event's metadata until one has a traceparent: a property lookup
 * per event when none has, a few microseconds for a page of 1,000.
 */
async function applyTraced(
  tracing: Tracing | undefined,
  ctx: { tx: Queryable; processor: string; version: number },
  events: StoredEvent[],
  apply: () => Promise<void>,
): Promise<void> {
  if (tracing === undefined) return apply();
  const cause: Origin = {
    processor: ctx.processor,
    events: [events[0]!.position.toString(), events.at(-1)!.position.toString()],
  };
  const bound = async (origin: Origin) => {
    tracing.bind(ctx.tx, origin);
    try {
      await apply();
    } finally {
      tracing.unbind(ctx.tx);
    }
  };
  const otel = tracing.otel;
  if (otel) return otel.page(ctx.processor, ctx.version, events, cause, (origin) => bound(origin ?? cause));
  for (const event of events) {
    const origin = originOfEvent(event.metadata);
    const traceparent = validTraceparent(origin?.traceparent);
    if (traceparent === undefined) continue;
    return bound({ ...cause, traceparent, tracestate: validTracestate(origin?.tracestate) });
  }
  return bound(cause);
}

async function applyPipeline(
  def: ProcessorDefinition,
  events: StoredEvent[],
  ctx: Parameters<ProcessorDefinition['pipeline']>[1],
): Promise<void> {
  if (ctx.signal.aborted) throw new Aborted();
  const output$ = def.pipeline(from(events), ctx);
  // takeUntil(abort): shutdown stops the page; the thrown Aborted rolls it back.
  await lastValueFrom(output$.pipe(takeUntil(fromEvent(ctx.signal, 'abort')), defaultIfEmpty(undefined)));
  if (ctx.signal.aborted) throw new Aborted();
}

/**
 * Counts a failed run on one event. Under the retry budget the run is retried with
 * backoff (the job's); past it, `halt` marks the processor failed and `skip` moves the
 * event to the dead-letter table and the checkpoint past it — unless the version was
 * paused, halted or rewound meanwhile (`changed`: the run reads its row again).
 */
async function onEventFailure(
  deps: RunDeps,
  def: ProcessorDefinition,
  version: number,
  event: StoredEvent,
  failure: unknown,
  log: Logger,
): Promise<'retry' | 'halted' | 'skipped' | 'changed'> {
  const message = errorMessage(failure);
  const now = deps.clock.now();
  // outbatch's own statements: a hung one would leave the run job doing for good.
  const own = withOwnDeadline(deps.pool);
  const attempts = await recordFailure(own, deps.q, def.name, version, event.position, message, now);
  if (attempts < def.attempts) {
    log.warn(
      { err: failure, position: event.position.toString(), attempt: attempts },
      'event failed; the run will be retried',
    );
    return 'retry';
  }
  if (def.onPoison === 'halt') {
    await haltVersion(own, deps.q, def.name, version, event.position, message, now);
    log.error(
      { err: failure, position: event.position.toString(), attempts },
      `processor "${def.name}" halted on event ${event.position} after ${attempts} attempts: fix it, then "outbatch processors reset-failed ${def.name}"`,
    );
    return 'halted';
  }
  // Every statement of the skip is outbatch's own: all under the deadline.
  const skipped = await withTransaction(deps.pool, (tx) =>
    underDeadline(tx, ownDeadline(deps.pool), async () => {
      const row = await lockVersion(tx, deps.q, def.name, version);
      if (!row || row.paused || row.failed) return false;
      // Skip only if this event is still the next one: a rewind meanwhile must not be jumped over.
      const next = await deps.read({
        after: row.checkpoint,
        types: def.types ?? undefined,
        streamPrefix: def.streamPrefix ?? undefined,
        limit: 1,
        client: tx,
      });
      if (next.events[0]?.position !== event.position) return false;
      await deadLetter(tx, deps.q, {
        processor: def.name,
        version,
        position: event.position,
        txId: event.txId,
        stream: event.stream,
        type: event.type,
        error: message,
        stack: failure instanceof Error ? (failure.stack ?? null) : null,
        attempts,
      });
      // The row is locked: nothing can have changed it since.
      return saveCheckpoint(
        tx,
        deps.q,
        def.name,
        version,
        parseCheckpoint(row.checkpoint),
        { txId: event.txId, position: event.position },
        1,
        now,
      );
    }),
  );
  if (!skipped) return 'changed'; // paused, halted or rewound meanwhile: the run looks again
  log.error(
    { err: failure, position: event.position.toString(), attempts },
    `processor "${def.name}" skipped event ${event.position} after ${attempts} attempts (dead-lettered)`,
  );
  return 'skipped';
}
