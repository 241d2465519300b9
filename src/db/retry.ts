/**
 * Start-up steps retried through connection trouble: a worker that starts while the
 * network drops a connection, or while the server restarts, must come up, not exit on its
 * first lost connection (found by ops/chaos/faults.ts: a worker started during faults
 * exited 1 every time). Only connection trouble is retried, for `timeoutMs`; anything the
 * server refuses (pending migrations, a tx id horizon) is final at once.
 */
import type { Logger } from 'pino';
import { poolerRefusedStartup } from './pooler.js';
import { failureKind } from './retryable.js';

/** Start-up was given up because its abort signal fired (app.run's `signal`) while it retried. */
export class StartAborted extends Error {
  constructor(what: string, options?: { cause?: unknown }) {
    super(`${what}: stopped retrying, the run was aborted`, options);
    this.name = 'StartAborted';
  }
}

export async function retryConnection<T>(
  what: string,
  fn: () => Promise<T>,
  log: Logger,
  options: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<T> {
  const { timeoutMs = 60_000, signal } = options;
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await fn();
    } catch (error) {
      const misconfigured = poolerRefusedStartup(error);
      if (misconfigured) throw misconfigured;
      if (failureKind(error) !== 'connection' || Date.now() >= deadline) throw error;
      if (signal?.aborted) throw new StartAborted(what, { cause: error });
      const waitMs = Math.min(100 * 2 ** attempt, 5_000);
      log.warn({ err: error, waitMs }, `${what} failed; retrying`);
      // An abort ends the wait at once: a stop asked for during an outage is not held up to a minute.
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', done);
          resolve();
        };
        const timer = setTimeout(done, waitMs);
        signal?.addEventListener('abort', done, { once: true });
      });
      if (signal?.aborted) throw new StartAborted(what, { cause: error });
    }
  }
}
