import pg from 'pg';
import type { Logger } from 'pino';
import { Observable } from 'rxjs';
import { ValidationError } from '../errors.js';
import { describeTarget } from './connection.js';
import { isRetryable } from './retryable.js';

/**
 * `connected` is emitted after every (re)connection: notifications sent while the
 * connection was down are lost, so a subscriber should treat it as "check now".
 */
export type ListenEvent = { kind: 'connected' } | { kind: 'notification'; channel: string; payload: string };

export interface ListenOptions {
  url: string;
  channels: string[];
  log: Logger;
  /** First reconnection delay (default 100 ms), doubled per failure up to `maxDelayMs` (default 10 s). */
  initialDelayMs?: number;
  maxDelayMs?: number;
  applicationName?: string;
}

// Channels are identifiers we LISTEN to by name; only plain lower-case ones are accepted.
const CHANNEL = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * A dedicated connection (not from the pool: LISTEN belongs to a session) that listens
 * to `channels`, reconnects with exponential backoff and jitter while the failure is
 * retryable (server restart, network cut, terminated backend), and errors otherwise.
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
  const initial = options.initialDelayMs ?? 100;
  const max = options.maxDelayMs ?? 10_000;
  const log = options.log.child({ component: 'listen', channels: options.channels });

  return new Observable<ListenEvent>((subscriber) => {
    let closed = false;
    let failures = 0;
    let client: pg.Client | undefined;
    let timer: NodeJS.Timeout | undefined;

    const retryOrFail = (error: unknown) => {
      if (closed) return;
      if (!isRetryable(error)) {
        subscriber.error(error);
        return;
      }
      const delay = Math.min(max, initial * 2 ** failures) * (0.5 + Math.random() / 2);
      failures += 1;
      log.warn(
        { err: error, target: describeTarget(options.url), retryInMs: Math.round(delay) },
        'listen connection lost; reconnecting',
      );
      timer = setTimeout(connect, delay);
    };

    const connect = async () => {
      const current = new pg.Client({
        connectionString: options.url,
        application_name: options.applicationName ?? 'outbatch-listen',
      });
      client = current;
      let lost = false;
      // 'error' and 'end' both fire for one loss; handle it once.
      const onLost = (error?: Error) => {
        if (lost) return;
        lost = true;
        current.end().catch(() => {});
        retryOrFail(error ?? Object.assign(new Error('Connection terminated'), { retryable: true }));
      };
      current.on('notification', (message) => {
        subscriber.next({ kind: 'notification', channel: message.channel, payload: message.payload ?? '' });
      });
      current.on('error', onLost);
      current.on('end', () => onLost());
      try {
        await current.connect();
        for (const channel of options.channels) await current.query(`LISTEN "${channel}"`);
      } catch (error) {
        if (closed) return;
        onLost(error as Error);
        return;
      }
      if (closed) return;
      failures = 0;
      subscriber.next({ kind: 'connected' });
    };

    void connect();
    return () => {
      closed = true;
      clearTimeout(timer);
      client?.end().catch(() => {});
    };
  });
}
