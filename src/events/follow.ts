import type { Logger } from 'pino';
import {
  defer,
  exhaustMap,
  from,
  merge,
  type Observable,
  retry,
  startWith,
  tap,
  throwError,
  timer,
} from 'rxjs';
import { listen } from '../db/listen.js';
import { isRetryable } from '../db/retryable.js';
import { ValidationError } from '../errors.js';
import { type Checkpoint, parseCheckpoint, START_CHECKPOINT } from './checkpoint.js';
import { checkLimit, type EventFilter, filterParams } from './filter.js';
import type { ReadOptions, ReadPage } from './read.js';
import type { StoredEvent } from './storedEvent.js';

export interface FollowOptions extends EventFilter {
  /** Events per read (default 1000). */
  pageSize?: number;
  /**
   * Read this often even without a notification (default 1000 ms): events held back by a
   * long transaction elsewhere become readable when it ends, and that sends no NOTIFY.
   */
  pollIntervalMs?: number;
}

/** The NOTIFY channel of a schema's appends. */
export function eventsChannel(schema: string): string {
  return `${schema}_events`;
}

/**
 * Every event after `after`, in the readers' order, then each new one as it becomes
 * readable; never completes. Wakes on NOTIFY (one per appending transaction), on
 * (re)connection of the LISTEN connection, and on a poll timer.
 */
export function makeFollow(deps: {
  read: (options: ReadOptions) => Promise<ReadPage>;
  url: () => Promise<string>;
  schema: string;
  log: Logger;
}) {
  return function follow(after: Checkpoint = START_CHECKPOINT, options: FollowOptions = {}) {
    parseCheckpoint(after);
    filterParams(options);
    const pageSize = checkLimit(options.pageSize ?? 1000, 'pageSize');
    const pollMs = options.pollIntervalMs ?? 1000;
    if (!Number.isFinite(pollMs) || pollMs < 10) {
      throw new ValidationError(`pollIntervalMs is ${JSON.stringify(pollMs)}: expected at least 10 (ms)`);
    }
    const filter = { types: options.types, streamPrefix: options.streamPrefix };
    let checkpoint = after;
    let wokenWhileReading = false;

    async function* drain(): AsyncGenerator<StoredEvent> {
      do {
        wokenWhileReading = false;
        for (;;) {
          const page = await deps.read({ ...filter, after: checkpoint, limit: pageSize });
          for (const event of page.events) yield event;
          checkpoint = page.checkpoint;
          if (page.caughtUp) break;
        }
      } while (wokenWhileReading);
    }

    return from(deps.url()).pipe(
      exhaustMap((url) =>
        merge(
          listen({ url, channels: [eventsChannel(deps.schema)], log: deps.log }),
          timer(pollMs, pollMs),
        ).pipe(
          startWith('start'),
          tap(() => {
            wokenWhileReading = true;
          }),
          // exhaustMap: one drain at a time, in order. Wakes during a drain are not queued
          // (a burst of NOTIFYs would mean a burst of empty reads); the flag set above
          // makes the running drain read once more instead.
          exhaustMap(() =>
            defer(drain).pipe(
              // A dropped connection mid-drain resumes from the last whole page.
              retry({
                delay: (error, attempt) =>
                  isRetryable(error) ? timer(Math.min(10_000, 100 * 2 ** attempt)) : throwError(() => error),
              }),
            ),
          ),
        ),
      ),
    ) as Observable<StoredEvent>;
  };
}
