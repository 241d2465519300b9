/**
 * The worker's own connections: a small control pool (claims, outcome batches, heartbeat,
 * maintenance) and a handler pool sized from `concurrency` (`ctx.tx`, `ctx.transaction`,
 * `ctx.defer`). Sharing one pool, handlers that held every connection for longer than the
 * stall timeout starved the heartbeat, and other workers recovered jobs that were still
 * running: each ran up to its `attempts` times.
 *
 * An app keeps the pools of its last stopped worker on a shelf for its next run with the
 * same settings: opening them is a dozen cold backends, about 50 ms of a 2-core server at
 * every start, and a worker started again and again (tests, a job runner that starts one
 * per batch, the benchmark) paid it each time. Pools come back to the shelf only from a
 * clean stop (no handler left running, no connection being abandoned); `close()` ends them.
 */
import type pg from 'pg';
import { createPool } from '../db/connection.js';
import type { Logger } from '../log.js';

/**
 * Connections for claims, outcome batches, heartbeat and maintenance: each runs at most
 * one statement at a time, and one more for a statement abandoned at its deadline whose
 * connection is still being closed.
 */
const CONTROL_CONNECTIONS = 5;

export interface WorkerPools {
  control: pg.Pool;
  handlers: pg.Pool;
}

export interface PoolSettings {
  concurrency: number;
  /** The control statements' deadline (query_timeout): see worker.ts. */
  controlDeadlineMs: number;
}

export interface WorkerPoolShelf {
  /** The shelved pools if they were made for these settings, else new ones. */
  take(databaseUrl: string, log: Logger, settings: PoolSettings): WorkerPools;
  /** `reusable`: the worker stopped cleanly. Otherwise, or if the shelf is taken or closed, the pools are ended. */
  putBack(pools: WorkerPools, reusable: boolean): Promise<void>;
  /** Ends the shelved pools; later put-backs end theirs. */
  close(): Promise<void>;
}

function createWorkerPools(databaseUrl: string, log: Logger, settings: PoolSettings): WorkerPools {
  return {
    // lock_timeout: a lock wait ends on the server after 1 s as a transient refusal, so
    // the outcome writer sets that outcome aside instead of holding every other outcome
    // behind it, and abandoned statements cannot pile up waiting on a lock. No server-side
    // statement_timeout: a long maintenance statement (a large purge) must be allowed to
    // finish on the server even when the client stops waiting. No JIT: the claim's cost
    // estimate can be high enough to compile for, 290 ms for a 9 ms statement (claim.ts).
    control: createPool(databaseUrl, log, {
      max: CONTROL_CONNECTIONS,
      applicationName: 'outbatch-control',
      queryTimeoutMs: settings.controlDeadlineMs,
      lockTimeoutMs: 1_000,
      jit: false,
    }),
    handlers: createPool(databaseUrl, log, {
      max: settings.concurrency,
      applicationName: 'outbatch-handler',
    }),
  };
}

async function endPools(pools: WorkerPools, log: Logger): Promise<void> {
  await Promise.all([pools.control.end(), pools.handlers.end()]).catch((error) => {
    log.warn({ err: error }, 'closing the worker connections failed');
  });
}

export function makeWorkerPoolShelf(log: Logger): WorkerPoolShelf {
  let shelved: { pools: WorkerPools; key: string } | undefined;
  let closed = false;
  const keyOf = (databaseUrl: string, settings: PoolSettings) =>
    JSON.stringify([databaseUrl, settings.concurrency, settings.controlDeadlineMs]);
  const lent = new Map<WorkerPools, string>();

  return {
    take(databaseUrl, poolLog, settings) {
      const key = keyOf(databaseUrl, settings);
      let pools: WorkerPools;
      if (shelved?.key === key) {
        pools = shelved.pools;
        shelved = undefined;
      } else {
        pools = createWorkerPools(databaseUrl, poolLog, settings);
      }
      lent.set(pools, key);
      return pools;
    },
    async putBack(pools, reusable) {
      const key = lent.get(pools);
      lent.delete(pools);
      if (reusable && !closed && !shelved && key !== undefined) {
        shelved = { pools, key };
        return;
      }
      await endPools(pools, log);
    },
    async close() {
      closed = true;
      const pools = shelved?.pools;
      shelved = undefined;
      if (pools) await endPools(pools, log);
    },
  };
}
