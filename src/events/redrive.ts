/**
 * Re-drive events to a task: defer jobs carrying the matching events of a range (one
 * per event, or per batch), so downstream side effects can be redone. Batches are cut
 * the same way every time and each takes a queueing lock named after its range, so
 * running the same re-drive twice defers nothing new while its jobs wait.
 */
import type { Queryable } from '../db/queryable.js';
import { ValidationError } from '../errors.js';
import { originOfEvent } from '../trace/origin.js';
import { checkTraceContext } from '../trace/traceContext.js';
import type { TraceOptions } from '../trace/tracing.js';
import { checkArchivedHorizon } from './archivedHorizon.js';
import type { Checkpoint } from './checkpoint.js';
import { type EventFilter, filterParams } from './filter.js';
import { checkpointBefore, checkpointThrough, countRange, parsePoint } from './range.js';
import type { ReadOptions, ReadPage } from './read.js';
import type { StoredEvent } from './storedEvent.js';

export interface RedriveOptions extends EventFilter {
  /** `start`, a position, or an ISO time. */
  from: string;
  /** A position (included) or an ISO time (events recorded before it); default: the head. */
  to?: string;
  /** The task that receives `{ event }` (batch 1) or `{ events: [...] }`. */
  task: string;
  /** Events per job (default 1, at most 10,000). */
  batch?: number;
  /** Count and change nothing. */
  dryRun?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface RedriveResult {
  events: number;
  /** Jobs deferred now. */
  deferred: number;
  /** Batches whose job was already waiting (a repeated re-drive). */
  alreadyEnqueued: number;
}

export interface RedriveDeps {
  pool: () => Promise<Queryable>;
  q: string;
  read(options: ReadOptions): Promise<ReadPage>;
  defer(
    task: string,
    args: unknown,
    options: { queueingLock: string; onConflict: 'ignore' } & TraceOptions,
  ): Promise<{ enqueued: boolean }>;
}

/**
 * The trace of a batch's first traced event, which its re-drive job continues (docs/tracing.md).
 * Events appended from SQL may hold anything in `$origin`: a context that does not check out
 * is passed over, never a reason to fail the re-drive.
 */
function traceOf(events: StoredEvent[]): TraceOptions {
  for (const event of events) {
    const origin = originOfEvent(event.metadata);
    if (origin?.traceparent === undefined) continue;
    try {
      return checkTraceContext(origin.traceparent, origin.tracestate, '');
    } catch {}
  }
  return {};
}

function eventArgs(event: StoredEvent) {
  return {
    position: event.position.toString(),
    checkpoint: event.checkpoint,
    stream: event.stream,
    streamVersion: event.streamVersion,
    type: event.type,
    version: event.version,
    data: event.data,
    metadata: event.metadata,
    recordedAt: event.recordedAt.toISOString(),
  };
}

function isAfter(event: StoredEvent, through: Checkpoint): boolean {
  const [tx, position] = through.split(':').map(BigInt) as [bigint, bigint];
  return event.txId !== tx ? event.txId > tx : event.position > position;
}

export async function redrive(deps: RedriveDeps, options: RedriveOptions): Promise<RedriveResult> {
  const batch = options.batch ?? 1;
  if (!Number.isInteger(batch) || batch < 1 || batch > 10_000) {
    throw new ValidationError(
      `--batch ${JSON.stringify(batch)} is invalid: use a whole number from 1 to 10000`,
    );
  }
  if (typeof options.task !== 'string' || options.task.length === 0) {
    throw new ValidationError('--to-task is required: the task that receives the events');
  }
  filterParams(options);
  const db = await deps.pool();
  const from = parsePoint(options.from, '--from');
  const after = await checkpointBefore(db, deps.q, from);
  if (after === undefined)
    throw new ValidationError(
      `--from ${options.from} is past the head: no event was recorded at or after it`,
    );
  await checkArchivedHorizon(db, deps.q, after, `re-driving from ${options.from}`);
  const through =
    options.to === undefined
      ? undefined
      : await checkpointThrough(db, deps.q, parsePoint(options.to, '--to'));
  const filter = { types: options.types, streamPrefix: options.streamPrefix };
  const total = await countRange(db, deps.q, { after, through, ...filter });
  const result: RedriveResult = { events: total, deferred: 0, alreadyEnqueued: 0 };
  if (options.dryRun || total === 0) return result;

  let pending: StoredEvent[] = [];
  let done = 0;
  const flush = async () => {
    if (pending.length === 0) return;
    const first = pending[0]!;
    const last = pending.at(-1)!;
    const args = batch === 1 ? { event: eventArgs(first) } : { events: pending.map(eventArgs) };
    const outcome = await deps.defer(options.task, args, {
      queueingLock: `redrive:${options.task}:${first.position}-${last.position}`,
      onConflict: 'ignore',
      ...traceOf(pending),
    });
    if (outcome.enqueued) result.deferred += 1;
    else result.alreadyEnqueued += 1;
    done += pending.length;
    options.onProgress?.(done, total);
    pending = [];
  };
  let checkpoint = after;
  for (;;) {
    const page = await deps.read({ after: checkpoint, ...filter, limit: 1000 });
    const inRange =
      through === undefined ? page.events : page.events.filter((event) => !isAfter(event, through));
    for (const event of inRange) {
      pending.push(event);
      if (pending.length === batch) await flush();
    }
    checkpoint = page.checkpoint;
    if (page.caughtUp || inRange.length < page.events.length) break;
  }
  await flush();
  return result;
}
