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

export async function retryConnection<T>(
  what: string,
  fn: () => Promise<T>,
  log: Logger,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await fn();
    } catch (error) {
      const misconfigured = poolerRefusedStartup(error);
      if (misconfigured) throw misconfigured;
      if (failureKind(error) !== 'connection' || Date.now() >= deadline) throw error;
      const waitMs = Math.min(100 * 2 ** attempt, 5_000);
      log.warn({ err: error, waitMs }, `${what} failed; retrying`);
      await new Promise((resolve) => setTimeout(resolve, waitMs));
    }
  }
}
