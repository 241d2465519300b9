/** LISTEN on a dedicated connection that reconnects, as an Observable of notifications. */
import pg from 'pg';
import type { Logger } from 'pino';
import { EMPTY, Observable } from 'rxjs';
import { ValidationError } from '../errors.js';
import { connectionFailure, describeTarget } from './connection.js';
import { detectPooler } from './pooler.js';
import { isRetryable, sqlState } from './retryable.js';

/**
 * `connected` is emitted after every (re)connection: notifications sent while the
 * connection was down are lost, so a subscriber should treat it as "check now".
 */
export type ListenEvent = { kind: 'connected' } | { kind: 'notification'; channel: string; payload: string };

export interface ListenOptions {
  /**
   * A direct connection to PostgreSQL. Undefined — behind a transaction pooler with no
   * `listenUrl` — means nothing to listen on: the Observable completes at once and the
   * consumer's poll timer does the waking (openDatabase has said so, once).
   */
  url: string | undefined;
  channels: string[];
  log: Logger;
  /** First reconnection delay (default 100 ms), doubled per failure up to `maxDelayMs` (default 10 s). */
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** How often the idle connection proves it is alive with `SELECT 1` (default 15 s). */
  livenessIntervalMs?: number;
  /**
   * How long connecting, LISTEN or a liveness check may go unanswered before the
   * connection is taken for dead, dropped and replaced (default 10 s).
   */
  livenessTimeoutMs?: number;
  applicationName?: string;
}

// Channels are identifiers we LISTEN to by name; only plain lower-case ones are accepted.
const CHANNEL = /^[a-z_][a-z0-9_]{0,62}$/;

// The kernel's probes find a dead peer only after minutes (9 probes, 75 s apart, on
// Linux) and never while unanswered bytes wait to be sent; the liveness check bounds
// detection. Keepalive still helps: it keeps NAT and load-balancer entries warm.
const KEEPALIVE_DELAY_MS = 5_000;

// The network or the name service is away for now. DNS failures are here although
// isRetryable calls ENOTFOUND final: that table also answers the CLI's connection
// check, which should fail fast on a mistyped host, while a long-lived listener whose
// host vanished from DNS (a resolver outage, a failover re-pointing a record, a
// container network still starting) should wait for it to come back.
const TRANSIENT_NETWORK = new Set([
  'ENOTFOUND',
  'EAI_AGAIN',
  'EAI_FAIL',
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
]);

/**
 * Whether a long-lived connection (LISTEN, `events.follow()`) should keep trying after
 * `error`: network and DNS failures, refused or reset connections, timeouts, terminated
 * backends (class 57P), connection exceptions (class 08, which PgBouncer also uses for a
 * server it cannot reach) and everything `isRetryable` retries.
 *
 * Anything else ends the stream, and that is a choice for two refusals in particular:
 * - authentication (28000 no pg_hba.conf entry, 28P01 wrong password) and
 * - 3D000 database does not exist.
 * Our URL is fixed for the life of the process, so these heal only when someone changes
 * configuration (the credentials, pg_hba.conf, the database's name or existence); every
 * attempt until then is a failed login in the server's log, and repeated ones can trip
 * lockouts (fail2ban, a cloud provider's auth throttling). The consumers degrade rather
 * than stop: a worker and the processors' trigger fall back to polling with one error
 * line, and a follower ends with the error instead of waiting in silence. The price: a
 * database dropped and restored while workers run leaves them polling until restarted.
 */
export function isReconnectable(error: unknown): boolean {
  if (error === null || typeof error !== 'object') return false;
  if (isRetryable(error)) return true;
  const code = sqlState(error);
  if (code !== undefined && (TRANSIENT_NETWORK.has(code) || /^(08|57P)/.test(code))) return true;
  const cause = (error as { cause?: unknown }).cause;
  return cause !== undefined && cause !== error && isReconnectable(cause);
}

/** The n-th retry's delay (n from 0): doubled each time up to `maxMs`, jittered down to half. */
export function reconnectDelayMs(failures: number, initialMs: number, maxMs: number): number {
  return Math.min(maxMs, initialMs * 2 ** failures) * (0.5 + Math.random() / 2);
}

function lostConnection(message: string): Error {
  return Object.assign(new Error(message), { retryable: true });
}

/**
 * A dedicated connection (not from the pool: LISTEN belongs to a session) that listens
 * to `channels` and reconnects with capped exponential backoff and jitter for as long as
 * the failure is `isReconnectable`; it errors otherwise. A connection that stops
 * answering (a half-open TCP connection: the peer vanished without FIN or RST) is found
 * by the liveness check within `livenessIntervalMs + livenessTimeoutMs` and replaced.
 * Unsubscribing closes the connection.
 */
export function listen(options: ListenOptions): Observable<ListenEvent> {
  for (const channel of options.channels) {
    if (!CHANNEL.test(channel)) {
      throw new ValidationError(
        `channel name ${JSON.stringify(channel)} is invalid: use lower-case letters, digits and '_' (at most 63)`,
      );
    }
  }
  const url = options.url;
  if (url === undefined) return EMPTY;
  const initial = options.initialDelayMs ?? 100;
  const max = options.maxDelayMs ?? 10_000;
  const intervalMs = options.livenessIntervalMs ?? 15_000;
  const timeoutMs = options.livenessTimeoutMs ?? 10_000;
  const target = describeTarget(url);
  const log = options.log.child({ component: 'listen', channels: options.channels });

  return new Observable<ListenEvent>((subscriber) => {
    let closed = false;
    let connectedOnce = false;
    /** Failed attempts since the last good connection: the first of a run is logged as a warning. */
    let failures = 0;
    let retryTimer: NodeJS.Timeout | undefined;
    let closeCurrent: (() => void) | undefined;

    const retryOrFail = (error: unknown, connecting: boolean) => {
      if (closed) return;
      if (!isReconnectable(error)) {
        subscriber.error(
          connecting && !(error instanceof ValidationError) ? connectionFailure(error, url) : error,
        );
        return;
      }
      const retryInMs = Math.round(reconnectDelayMs(failures, initial, max));
      failures += 1;
      if (failures === 1) {
        log.warn(
          { err: error, target, retryInMs },
          connectedOnce ? 'listen connection lost; reconnecting' : 'listen connection failed; retrying',
        );
      } else {
        log.debug({ err: error, target, attempt: failures, retryInMs }, 'listen connection still failing');
      }
      retryTimer = setTimeout(connect, retryInMs);
    };

    const connect = async () => {
      const current = new pg.Client({
        connectionString: url,
        application_name: options.applicationName ?? 'outbatch-listen',
        keepAlive: true,
        keepAliveInitialDelayMillis: KEEPALIVE_DELAY_MS,
      });
      let lost = false;
      let connecting = true;
      let deadline: NodeJS.Timeout | undefined;
      let nextCheck: NodeJS.Timeout | undefined;
      const stopTimers = () => {
        clearTimeout(deadline);
        clearTimeout(nextCheck);
      };
      // One loss can be reported by 'error', 'end', a failed query and a deadline: handle it once.
      const onLost = (error: unknown) => {
        if (lost) return;
        lost = true;
        stopTimers();
        // The socket may be half-open: a polite end() would wait on it, so drop it.
        current.connection.stream.destroy();
        current.end().catch(() => {});
        retryOrFail(error, connecting);
      };
      // No reply in time: a dead peer (half-open TCP) or a server too stuck to serve us.
      const within = async (what: string, work: () => Promise<unknown>) => {
        deadline = setTimeout(
          () => onLost(lostConnection(`listen connection: no answer to ${what} within ${timeoutMs} ms`)),
          timeoutMs,
        );
        try {
          await work();
        } finally {
          clearTimeout(deadline);
        }
      };
      const check = () => {
        nextCheck = setTimeout(() => {
          within('a liveness check', () => current.query('SELECT 1')).then(() => {
            if (!lost && !closed) check();
          }, onLost);
        }, intervalMs);
      };
      closeCurrent = () => {
        lost = true;
        stopTimers();
        current.end().catch(() => {});
      };
      current.on('notification', (message) => {
        subscriber.next({ kind: 'notification', channel: message.channel, payload: message.payload ?? '' });
      });
      current.on('error', onLost);
      current.on('end', () => onLost(lostConnection('Connection terminated')));
      try {
        await within('connect and LISTEN', async () => {
          await current.connect();
          // Through a transaction pooler LISTEN would register on whichever server
          // connection ran it, and the notifications would never reach us: refuse.
          if ((await detectPooler(current)) !== 'none') {
            throw new ValidationError(
              `the LISTEN connection to ${target} goes through a connection pooler: set listenUrl (OUTBATCH_LISTEN_URL) to PostgreSQL itself, not PgBouncer`,
            );
          }
          for (const channel of options.channels) await current.query(`LISTEN "${channel}"`);
        });
      } catch (error) {
        onLost(error);
        return;
      }
      if (lost || closed) return;
      connecting = false;
      if (failures > 0) {
        log.info({ target, attempts: failures }, 'listen connection is back');
      }
      failures = 0;
      connectedOnce = true;
      subscriber.next({ kind: 'connected' });
      check();
    };

    void connect();
    return () => {
      closed = true;
      clearTimeout(retryTimer);
      closeCurrent?.();
    };
  });
}
