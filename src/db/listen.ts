/**
 * LISTEN on a dedicated connection, as an Observable of notifications. A pooled
 * connection cannot be used: LISTEN belongs to the session, and the pool would hand
 * the session to someone else. When the connection drops for a retryable reason the
 * observable reconnects (with backoff) and keeps going; anything else errors it.
 * Notifications sent while disconnected are lost, so consumers keep a polling fallback.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { Observable } from 'rxjs';
import { isRetryable } from './retryable.js';

export interface Notification {
  channel: string;
  payload: string;
}

const RECONNECT_MIN_MS = 100;
const RECONNECT_MAX_MS = 10_000;

function quoteChannel(channel: string): string {
  return `"${channel.replace(/"/g, '""')}"`;
}

export function listen(
  connect: () => Promise<pg.Client>,
  channels: string[],
  log: Logger,
): Observable<{ channel: string; payload: string }> {
  return new Observable<Notification>((subscriber) => {
    let client: pg.Client | undefined;
    let closed = false;
    let retryTimer: NodeJS.Timeout | undefined;
    let delay = RECONNECT_MIN_MS;

    const onLost = (error: unknown) => {
      const current = client;
      client = undefined;
      current?.removeAllListeners('notification');
      current?.end().catch(() => {});
      if (closed) return;
      if (!isRetryable(error)) {
        subscriber.error(error);
        return;
      }
      log.warn({ err: error, retryInMs: delay }, 'LISTEN connection lost; reconnecting');
      retryTimer = setTimeout(open, delay);
      delay = Math.min(delay * 2, RECONNECT_MAX_MS);
    };

    const open = async () => {
      let next: pg.Client | undefined;
      try {
        next = await connect();
        if (closed) {
          await next.end().catch(() => {});
          return;
        }
        next.on('notification', (message) => {
          subscriber.next({ channel: message.channel, payload: message.payload ?? '' });
        });
        next.on('error', onLost);
        // 'end' without 'error' is the server closing the session (e.g. terminated backend).
        next.on('end', () => {
          if (client === next) onLost(Object.assign(new Error('Connection terminated'), { retryable: true }));
        });
        for (const channel of channels) await next.query(`LISTEN ${quoteChannel(channel)}`);
        client = next;
        delay = RECONNECT_MIN_MS;
        log.debug({ channels }, 'listening');
      } catch (error) {
        if (next && next !== client) await next.end().catch(() => {});
        onLost(error);
      }
    };

    void open();
    return () => {
      closed = true;
      clearTimeout(retryTimer);
      const current = client;
      client = undefined;
      current?.removeAllListeners('notification');
      current?.end().catch(() => {});
    };
  });
}
