/**
 * deferAndWait: defer a job marked `awaited`, then wait for its outcome — woken by the
 * NOTIFY on "<schema>_done" that an awaited job's final status sends (schema/033), and by
 * polling, which covers a lost notification, a job that ended before the wait began, and a
 * database behind a pooler with no LISTEN.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { catchError, EMPTY, type Subscription } from 'rxjs';
import type { Database } from '../db/database.js';
import { ownDeadline, withDeadline } from '../db/deadline.js';
import { quoteSchema } from '../db/identifiers.js';
import { listen } from '../db/listen.js';
import type { Queryable } from '../db/queryable.js';
import { failureKind } from '../db/retryable.js';
import { withTransaction } from '../db/transaction.js';
import { type DurationInput, toMilliseconds } from '../duration.js';
import {
  AlreadyEnqueued,
  JobOutcomeError,
  OutbatchError,
  ValidationError,
  WaitTimeoutError,
} from '../errors.js';
import { type DeferResult, deferJob, type JobSpec } from './defer.js';

/**
 * How long an awaited job's row is kept after success when its task keeps no succeeded
 * jobs (`keepSucceededFor`): long enough for its waiter to read the result, then purged by
 * the workers' maintenance like any kept row. A task that keeps its jobs longer keeps these
 * as long.
 */
export const AWAITED_KEEP_MS = 60 * 60 * 1000;

/** How often a waiter looks at its job's row when no notification came (default 1 s). */
const DEFAULT_POLL_MS = 1_000;
/** A LISTEN connection no one waits on is closed after this long. */
const LINGER_MS = 5_000;

export interface WaitOptions {
  /** Give up after this long with a WaitTimeoutError (default: wait until the job ends). The job itself goes on. */
  timeout?: DurationInput;
  /** Look at the row this often when no NOTIFY arrives (default 1 s). */
  pollInterval?: DurationInput;
}

export interface WaitSettings {
  timeoutMs: number | null;
  pollMs: number;
}

/** Checks deferAndWait's own options; a `client` is refused (see below). */
export function checkWaitOptions(options: WaitOptions & { client?: unknown }, name: string): WaitSettings {
  if (options.client !== undefined) {
    throw new ValidationError(
      `deferAndWait of "${name}" takes no client: the job runs only once the transaction that defers it commits, so waiting inside it would never end; use defer with your client, or deferAndWait without one`,
    );
  }
  const positive = (value: DurationInput, what: string) => {
    const ms = toMilliseconds(value, what);
    if (ms <= 0) throw new ValidationError(`${what} (${ms} ms) is invalid: expected a duration above 0`);
    return ms;
  };
  return {
    timeoutMs: options.timeout === undefined ? null : positive(options.timeout, 'timeout'),
    pollMs:
      options.pollInterval === undefined ? DEFAULT_POLL_MS : positive(options.pollInterval, 'pollInterval'),
  };
}

/** How often a waiting job found by `onConflict: 'ignore'` may be claimed away before the mark lands. */
const MARK_TRIES = 5;

/**
 * Defers the job and marks it awaited in one transaction, so no worker can finish it
 * before the mark is there (which would delete a row whose task keeps no succeeded jobs).
 * With a queueing lock and `onConflict: 'ignore'`, the waiting job that holds the lock is
 * marked and waited for instead. Needs UPDATE on jobs (ops/sql/roles.sql grants the
 * appender role that column).
 *
 * The mark is set only on a row still `todo`. A waiting job found by 'ignore' is not
 * locked by the defer: a worker can claim it before the mark lands, having read it
 * unmarked, and then deletes the row at success — the wait reported the job "gone" (found
 * by review; a new job of ours, or one 'replace' updated, is locked by this transaction
 * until it commits). Such a job is no longer waiting, so the lock is free: defer again,
 * as a defer at that moment would have, and wait for that job.
 */
async function deferAwaited(pool: pg.Pool, schema: string, spec: JobSpec): Promise<string> {
  return withTransaction(pool, async (client) => {
    for (let attempt = 1; ; attempt++) {
      const result: DeferResult = await deferJob(client, schema, spec);
      const id = result.enqueued ? result.id : result.existingId;
      const { rows } = await client.query<{ task: string }>(
        `UPDATE ${quoteSchema(schema)}.jobs SET awaited = true WHERE id = $1 AND status = 'todo' RETURNING task`,
        [id],
      );
      // 'ignore' returns the waiting job whatever its task: waiting for another task's job
      // would resolve with that task's result, typed as this one's (found by review).
      // Refused, and the transaction rolled back with its mark.
      if (rows[0] && rows[0].task !== spec.task) {
        throw new AlreadyEnqueued(
          spec.queueingLock!,
          id,
          rows[0].task,
          "deferAndWait with onConflict 'ignore' waits for",
        );
      }
      if (rows[0]) return id;
      if (attempt >= MARK_TRIES) {
        // As defer_job's own "queueing lock kept changing": nothing was committed.
        throw new OutbatchError(
          'OUTBATCH_QUEUEING_LOCK_CHANGING',
          `deferAndWait of "${spec.task}": the job waiting with queueing lock "${spec.queueingLock}" was claimed ${MARK_TRIES} times before the wait could mark it; try again`,
        );
      }
    }
  });
}

interface JobOutcomeRow {
  status: string;
  task: string;
  attempts: number;
  result: unknown;
  error: string | null;
}

async function readOutcome(db: Queryable, schema: string, id: string): Promise<JobOutcomeRow | undefined> {
  const { rows } = await db.query<JobOutcomeRow>(
    `SELECT status, task, attempts, result, last_error ->> 'message' AS error
     FROM ${quoteSchema(schema)}.jobs WHERE id = $1`,
    [id],
  );
  return rows[0];
}

/** The result, an error for a final state that is not success, or undefined while the job is still on its way. */
function settled(
  id: string,
  row: JobOutcomeRow | undefined,
): { result: unknown } | JobOutcomeError | undefined {
  if (row === undefined) {
    return new JobOutcomeError(
      id,
      'gone',
      `job ${id} is gone: it was deleted (or purged after its keep time) before its outcome was read`,
    );
  }
  switch (row.status) {
    case 'succeeded':
      return { result: row.result };
    case 'failed':
      return new JobOutcomeError(
        id,
        'failed',
        `job ${id} (task ${row.task}) failed for good after ${row.attempts} attempt(s): ${row.error ?? 'no error recorded'}`,
        row.error,
      );
    case 'cancelled':
      return new JobOutcomeError(id, 'cancelled', `job ${id} (task ${row.task}) was cancelled`, row.error);
    default:
      return undefined; // todo (waiting, or a failed attempt's retry) or doing
  }
}

export interface JobWaiter {
  deferAndWait(spec: JobSpec, settings: WaitSettings): Promise<unknown>;
  /** Ends the LISTEN connection; waits in progress reject. */
  close(): void;
}

export function makeJobWaiter(deps: {
  schema: string;
  database: () => Promise<Database>;
  log: Logger;
  /** Told of a job deferred for later, so a worker in this process claims it when due. */
  deferredFor: (runAt: Date) => void;
}): JobWaiter {
  const { schema, log } = deps;
  // Per job id, the wake-ups of the waits on it.
  const waits = new Map<string, Set<() => void>>();
  let subscription: Subscription | undefined;
  let linger: NodeJS.Timeout | undefined;
  let closed = false;

  function wakeAll(): void {
    for (const wakes of waits.values()) for (const wake of wakes) wake();
  }

  function startListening(db: Database): void {
    clearTimeout(linger);
    linger = undefined;
    if (subscription) return;
    subscription = listen({
      url: db.listenTarget(),
      channels: [`${schema}_done`],
      log,
      applicationName: 'outbatch-wait',
    })
      .pipe(
        catchError((error) => {
          log.error({ err: error }, 'LISTEN for job outcomes failed for good; waits poll only');
          return EMPTY;
        }),
      )
      .subscribe((note) => {
        // After a (re)connection a notification may have been missed: every wait looks again.
        if (note.kind === 'connected') wakeAll();
        else for (const wake of waits.get(note.payload) ?? []) wake();
      });
  }

  function stopListeningSoon(): void {
    if (waits.size > 0 || !subscription) return;
    linger = setTimeout(() => {
      linger = undefined;
      if (waits.size > 0) return;
      subscription?.unsubscribe();
      subscription = undefined;
    }, LINGER_MS);
  }

  async function waitFor(db: Database, id: string, settings: WaitSettings): Promise<unknown> {
    const giveUpAt = settings.timeoutMs === null ? Number.POSITIVE_INFINITY : Date.now() + settings.timeoutMs;
    let wake: () => void = () => {};
    const wakes = waits.get(id) ?? new Set();
    waits.set(id, wakes);
    let woken = false;
    const onWake = () => {
      woken = true;
      wake();
    };
    wakes.add(onWake);
    try {
      for (;;) {
        if (closed) throw new ValidationError(`the app was closed while waiting for job ${id}`);
        woken = false;
        // Each look has a deadline: the app pool's own, or what is left of the wait if less.
        // Without one, a look on a half-open connection waited for TCP keepalive (minutes),
        // far past the wait's timeout (found by review, with the fault proxy). A look that
        // fails on the connection (abandoned at its deadline, cut, the server restarting)
        // does not end the wait: the job goes on, and the next look may find its outcome.
        const deadlineMs = Math.max(1, Math.min(ownDeadline(db.pool), giveUpAt - Date.now()));
        let row: JobOutcomeRow | undefined | null;
        try {
          row = await readOutcome(withDeadline(db.pool, deadlineMs), schema, id);
        } catch (error) {
          if (failureKind(error) !== 'connection') throw error;
          log.warn({ err: error, jobId: id }, 'looking at an awaited job failed; looking again');
          row = null;
        }
        const outcome = row === null ? undefined : settled(id, row);
        if (outcome instanceof JobOutcomeError) throw outcome;
        if (outcome) return outcome.result;
        const leftMs = giveUpAt - Date.now();
        if (leftMs <= 0) throw new WaitTimeoutError(id, settings.timeoutMs!);
        // A notification that came while the row was being read is not lost: look again at once.
        if (woken) continue;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(settings.pollMs, leftMs));
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = () => {};
      }
    } finally {
      wakes.delete(onWake);
      if (wakes.size === 0) waits.delete(id);
      stopListeningSoon();
    }
  }

  return {
    async deferAndWait(spec, settings) {
      if (closed) throw new ValidationError('the app is closed: deferAndWait needs an open app');
      const db = await deps.database();
      // Listening starts before the job exists, so its notification cannot come too early;
      // the first look at the row covers the connection still being opened.
      startListening(db);
      let id: string;
      try {
        id = await deferAwaited(db.pool, schema, spec);
        if (spec.runAt) deps.deferredFor(spec.runAt);
      } catch (error) {
        stopListeningSoon();
        throw error;
      }
      return waitFor(db, id, settings);
    },
    close() {
      closed = true;
      clearTimeout(linger);
      subscription?.unsubscribe();
      subscription = undefined;
      wakeAll();
    },
  };
}
