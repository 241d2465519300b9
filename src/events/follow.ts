/** follow(): every event after a checkpoint, then each new one as it becomes readable. */
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
import { isReconnectable, listen, reconnectDelayMs } from '../db/listen.js';
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
 * (re)connection of the LISTEN connection, and on a poll timer. Rides out any outage
 * `isReconnectable` calls transient (DNS, refused, reset, timeouts, restarts), on the
 * reads and on the LISTEN connection; errors only on a refusal that needs a config change.
 */
export function makeFollow(deps: {
  read: (options: ReadOptions) => Promise<ReadPage>;
  /** Where to LISTEN; undefined: behind a pooler with no listenUrl, so the poll timer alone wakes. */
  url: () => Promise<string | undefined>;
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
    /** Failed reads since the last good one: the first of a run is logged as a warning. */
    let readFailures = 0;

    async function* drain(): AsyncGenerator<StoredEvent> {
      do {
        wokenWhileReading = false;
        for (;;) {
          const page = await deps.read({ ...filter, after: checkpoint, limit: pageSize });
          if (readFailures > 0) {
            deps.log.info({ attempts: readFailures }, 'following events: reading works again');
            readFailures = 0;
          }
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
              // A dropped connection mid-drain resumes from the last whole page, however
              // long the database is away; only a refusal that needs a config change ends.
              retry({
                delay: (error, attempt) => {
                  if (!isReconnectable(error)) return throwError(() => error);
                  const retryInMs = Math.round(reconnectDelayMs(attempt - 1, 100, 10_000));
                  if (readFailures === 0) {
                    deps.log.warn({ err: error, retryInMs }, 'following events: reading failed; retrying');
                  } else {
                    deps.log.debug({ err: error, retryInMs }, 'following events: reading still failing');
                  }
                  readFailures += 1;
                  return timer(retryInMs);
                },
              }),
            ),
          ),
        ),
      ),
    ) as Observable<StoredEvent>;
  };
}
