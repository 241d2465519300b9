/**
 * The worker's own connections: a small control pool (claims, outcome batches, heartbeat,
 * maintenance) and a handler pool sized from `concurrency` (`ctx.tx`, `ctx.transaction`,
 * `ctx.defer`). Sharing one pool, handlers that held every connection for longer than the
 * stall timeout starved the heartbeat, and other workers recovered jobs that were still
 * running: each ran up to its `attempts` times.
 *
 * An app keeps the pools of its last stopped worker on a shelf for its next run (the
 * control pool if the stall timeout is the same, the handler pool if the concurrency is):
 * opening them is a dozen cold backends, about 50 ms of a 2-core server at every start, and
 * a worker started again and again (tests, a job runner that starts one per batch, the
 * benchmark) paid it each time. Pools come back to the shelf only from a clean stop (no
 * handler left running, no outcome unwritten), for 30 s; `close()` ends them.
 */
import type pg from 'pg';
import { createPool } from '../db/connection.js';
import type { Pooler } from '../db/pooler.js';
import type { Logger } from '../log.js';

/**
 * Connections for claims, outcome batches, heartbeat, maintenance, progress reports and the
 * jobs table's vacuum (jobsVacuum.ts): each runs at most one statement at a time, and one
 * more for a statement abandoned at its deadline whose connection is still being closed.
 */
const CONTROL_CONNECTIONS = 7;

export interface WorkerPools {
  control: pg.Pool;
  handlers: pg.Pool;
}

export interface PoolSettings {
  concurrency: number;
  /** The control statements' deadline (query_timeout): see worker.ts. */
  controlDeadlineMs: number;
  /** Behind a pooler the control pool loses its lock_timeout and jit=off (docs/pgbouncer.md). */
  pooler?: Pooler;
  preparedStatements?: boolean;
}

export interface WorkerPoolShelf {
  /** Each shelved pool if it was made for these settings, else a new one. */
  take(databaseUrl: string, log: Logger, settings: PoolSettings): WorkerPools;
  /** `reusable`: the worker stopped cleanly; they replace what the shelf holds. Otherwise, or once closed, they are ended. */
  putBack(pools: WorkerPools, reusable: boolean): Promise<void>;
  /** Ends the shelved pools; later put-backs end theirs. */
  close(): Promise<void>;
}

/** Makers of the two pools (each made only when the shelf has none to give). */
function poolMakers(databaseUrl: string, log: Logger, settings: PoolSettings) {
  const route = { pooler: settings.pooler, preparedStatements: settings.preparedStatements };
  return {
    // lock_timeout: a lock wait ends on the server after 1 s as a transient refusal, so
    // the outcome writer sets that outcome aside instead of holding every other outcome
    // behind it, and abandoned statements cannot pile up waiting on a lock. No server-side
    // statement_timeout: a long maintenance statement (a large purge) must be allowed to
    // finish on the server even when the client stops waiting. No JIT: the claim's cost
    // estimate can be high enough to compile for, 290 ms for a 9 ms statement (claim.ts). No
    // sort where an index gives the order: stale statistics made the claim sort the whole
    // backlog on every call (connection.ts, `sort`).
    control: () =>
      createPool(databaseUrl, log, {
        max: CONTROL_CONNECTIONS,
        applicationName: 'outbatch-control',
        queryTimeoutMs: settings.controlDeadlineMs,
        lockTimeoutMs: 1_000,
        jit: false,
        sort: false,
        ...route,
      }),
    handlers: () =>
      createPool(databaseUrl, log, {
        max: settings.concurrency,
        applicationName: 'outbatch-handler',
        ...route,
      }),
  };
}

interface Shelved {
  pool: pg.Pool;
  key: string;
  expiry: NodeJS.Timeout;
}

/**
 * How long a stopped worker's pools wait for the next run: as long as an idle connection
 * lives in any pool (createPool's idle timeout), no longer. A connection that went half-open
 * meanwhile (a failover, a partition) costs the next run what it costs a running worker:
 * one control deadline per connection, then a new one (faults.md, half-open connections).
 */
const SHELF_LIFE_MS = 30_000;

export function makeWorkerPoolShelf(log: Logger): WorkerPoolShelf {
  // One pool of each kind, keyed by what it was made for: a run at another concurrency
  // still finds the control pool it can use.
  const shelved: { control?: Shelved; handlers?: Shelved } = {};
  let closed = false;
  const lent = new Map<pg.Pool, string>();

  function takeOne(kind: 'control' | 'handlers', key: string, make: () => pg.Pool): pg.Pool {
    const kept = shelved[kind];
    let pool: pg.Pool;
    if (kept?.key === key) {
      pool = kept.pool;
      clearTimeout(kept.expiry);
      shelved[kind] = undefined;
    } else {
      pool = make();
    }
    lent.set(pool, key);
    return pool;
  }

  /** The newest clean pool of a kind is kept; the one it replaces is ended. */
  async function putBackOne(kind: 'control' | 'handlers', pool: pg.Pool, reusable: boolean): Promise<void> {
    const key = lent.get(pool);
    lent.delete(pool);
    if (!reusable || closed || key === undefined) return endPool(pool);
    const replaced = shelved[kind];
    const expiry = setTimeout(() => {
      if (shelved[kind]?.pool !== pool) return;
      shelved[kind] = undefined;
      void endPool(pool);
    }, SHELF_LIFE_MS);
    expiry.unref();
    shelved[kind] = { pool, key, expiry };
    if (replaced) {
      clearTimeout(replaced.expiry);
      await endPool(replaced.pool);
    }
  }

  async function endPool(pool: pg.Pool): Promise<void> {
    await pool.end().catch((error) => {
      log.warn({ err: error }, 'closing the worker connections failed');
    });
  }

  return {
    take(databaseUrl, poolLog, settings) {
      const pools = poolMakers(databaseUrl, poolLog, settings);
      const route = [settings.pooler, settings.preparedStatements];
      return {
        control: takeOne('control', JSON.stringify([databaseUrl, settings.controlDeadlineMs, route]), () =>
          pools.control(),
        ),
        handlers: takeOne('handlers', JSON.stringify([databaseUrl, settings.concurrency, route]), () =>
          pools.handlers(),
        ),
      };
    },
    async putBack(pools, reusable) {
      await Promise.all([
        putBackOne('control', pools.control, reusable),
        putBackOne('handlers', pools.handlers, reusable),
      ]);
    },
    async close() {
      closed = true;
      for (const kept of [shelved.control, shelved.handlers]) if (kept) clearTimeout(kept.expiry);
      const pools = [shelved.control?.pool, shelved.handlers?.pool];
      shelved.control = undefined;
      shelved.handlers = undefined;
      await Promise.all(pools.map((pool) => pool && endPool(pool)));
    },
  };
}
