/**
 * The partitioned event log (schema/029): converting a stored, unpartitioned `events`
 * online, and keeping partitions ready ahead of the appends. docs/event-log.md.
 */
import type pg from 'pg';
import { quoteSchema } from '../db/identifiers.js';
import type { Queryable } from '../db/queryable.js';
import { LOCK_NOT_AVAILABLE, sqlState } from '../db/retryable.js';
import { withTransaction } from '../db/transaction.js';
import { ConversionError, ValidationError } from '../errors.js';

/** `'unpartitioned'`: the single table of installs from before 029, until `outbatch events partition`. */
export type EventsLayout = 'partitioned' | 'unpartitioned';

export async function eventsLayout(db: Queryable, schema: string): Promise<EventsLayout> {
  const { rows } = await db.query<{ kind: string }>(
    `SELECT c.relkind AS kind FROM pg_class c WHERE c.oid = to_regclass($1)`,
    [`${quoteSchema(schema)}.events`],
  );
  return rows[0]?.kind === 'p' ? 'partitioned' : 'unpartitioned';
}

/** How long a partition's ATTACH waits for the default partition's readers before the next pass tries again. */
const AHEAD_LOCK_TIMEOUT = '500ms';

/**
 * Creates the partitions due (create_event_partitions_ahead): usually none. Called by
 * every worker's maintenance pass and by `migrate`. Two workers at once: the function
 * takes a transaction-scoped try-lock, the second finds it taken and creates nothing.
 * A lock timeout (a long read holding the default partition) or a lost reply leaves
 * nothing half made (the DDL is one transaction) and the next pass tries again.
 */
export async function createPartitionsAhead(pool: pg.Pool, schema: string): Promise<string[]> {
  return withTransaction(pool, async (client) => {
    await client.query(`SET LOCAL lock_timeout = '${AHEAD_LOCK_TIMEOUT}'`);
    const { rows } = await client.query<{ name: string }>(
      `SELECT name FROM ${quoteSchema(schema)}.create_event_partitions_ahead() AS name`,
    );
    return rows.map((row) => row.name);
  });
}

export interface ConvertOptions {
  /** Events per partition from now on (default: event_log's, 10 000 000). */
  partitionSize?: number;
  /** How long each attempt at the swap waits for its lock (default 2 s). */
  lockTimeoutMs?: number;
  /** Swap attempts before giving up (default 30). */
  attempts?: number;
  onProgress?: (step: ConvertStep) => void;
}

export type ConvertStep =
  | { step: 'validating'; bound: bigint; events: bigint }
  | { step: 'swapping'; attempt: number }
  | { step: 'waiting'; attempt: number; reason: string }
  | { step: 'done'; partitions: string[] };

/**
 * Converts an unpartitioned `events` into the partitioned layout while appends and reads
 * go on (schema/029 explains each step):
 *   1. a CHECK (position < bound) added NOT VALID: instant;
 *   2. VALIDATE: a scan that appends and reads do not wait for;
 *   3. the swap: milliseconds of ACCESS EXCLUSIVE, retried on lock timeout.
 * Run it again after any failure: step 1 replaces the CHECK, and the swap happens once.
 */
export async function convertToPartitioned(
  pool: pg.Pool,
  schema: string,
  options: ConvertOptions = {},
): Promise<{ converted: boolean; partitions: string[] }> {
  // One conversion at a time per schema: a session lock on one connection held for the run.
  // Two at once would each set the bound CHECK the other's swap counts on, and one's failure
  // would take it away under the other's ATTACH, which would then scan the whole table
  // under ACCESS EXCLUSIVE (found by review).
  const key = `${schema}.events.partition`;
  const session = await pool.connect();
  try {
    const { rows: locked } = await session.query<{ ok: boolean }>(
      'SELECT pg_try_advisory_lock(hashtext($1)) AS ok',
      [key],
    );
    if (!locked[0]?.ok) {
      throw new ValidationError(
        `another "outbatch events partition" is converting schema "${schema}": wait for it to finish`,
      );
    }
    try {
      return await convert(pool, schema, options);
    } catch (error) {
      // A CHECK left on the unpartitioned table would fail appends once they reach its
      // bound: a failed conversion takes it away (best effort: a later run replaces it).
      await dropBound(pool, schema).catch(() => {});
      if (error instanceof ConversionError || error instanceof ValidationError) throw error;
      // A role that does not own the table is refused somewhere along the way (the sequence,
      // the CHECK, the swap): say who may run it rather than which object refused first.
      const who =
        sqlState(error) === '42501'
          ? `; run it as the owner of "${schema}".events (the role that ran the migrations)`
          : '';
      throw new ConversionError(
        `events was not converted: ${(error as Error).message}${who}; appends go on into the unpartitioned table, and running the command again is safe`,
        { cause: error },
      );
    } finally {
      // A lost connection has released it already; the run's own error is the one to report.
      await session.query('SELECT pg_advisory_unlock(hashtext($1))', [key]).catch(() => {});
    }
  } finally {
    session.release();
  }
}

async function dropBound(pool: pg.Pool, schema: string): Promise<void> {
  if ((await eventsLayout(pool, schema)) === 'partitioned') return;
  await withTransaction(pool, async (client) => {
    await client.query(`SET LOCAL lock_timeout = '5s'`);
    await client.query(
      `ALTER TABLE ${quoteSchema(schema)}.events DROP CONSTRAINT IF EXISTS events_partition_bound`,
    );
  });
}

async function convert(
  pool: pg.Pool,
  schema: string,
  options: ConvertOptions,
): Promise<{ converted: boolean; partitions: string[] }> {
  const q = quoteSchema(schema);
  const attempts = options.attempts ?? 30;
  const lockTimeoutMs = options.lockTimeoutMs ?? 2000;
  if (options.partitionSize !== undefined) checkPartitionSize(options.partitionSize);
  if (!Number.isInteger(lockTimeoutMs) || lockTimeoutMs < 1) {
    throw new ValidationError(
      `lock timeout ${lockTimeoutMs} is invalid: use a whole number of milliseconds >= 1`,
    );
  }
  if ((await eventsLayout(pool, schema)) === 'partitioned') return { converted: false, partitions: [] };
  if (options.partitionSize !== undefined) {
    await pool.query(`UPDATE ${q}.event_log SET partition_size = $1`, [options.partitionSize]);
  }
  for (let round = 1; ; round++) {
    const bound = await nextBound(pool, q);
    // Step 1 is catalog-only but takes ACCESS EXCLUSIVE for it: retried like the swap.
    await retryOnLockTimeout(attempts, options, () =>
      withTransaction(pool, async (client) => {
        await client.query(`SET LOCAL lock_timeout = '${lockTimeoutMs}ms'`);
        await client.query(`SELECT ${q}.prepare_events_partitioning($1)`, [bound.bound.toString()]);
      }),
    );
    options.onProgress?.({ step: 'validating', bound: bound.bound, events: bound.reached });
    // Step 2 scans the whole table; with no statement_timeout of ours on a long scan.
    await withTransaction(pool, async (client) => {
      await client.query('SET LOCAL statement_timeout = 0');
      await client.query(`SELECT ${q}.validate_events_for_partitioning()`);
    });
    for (let attempt = 1; attempt <= attempts; attempt++) {
      options.onProgress?.({ step: 'swapping', attempt });
      try {
        await withTransaction(pool, async (client) => {
          await client.query(`SET LOCAL lock_timeout = '${lockTimeoutMs}ms'`);
          await client.query(`SELECT ${q}.swap_events_to_partitioned($1)`, [bound.bound.toString()]);
        });
        const partitions = await createPartitionsAhead(pool, schema);
        options.onProgress?.({ step: 'done', partitions });
        return { converted: true, partitions };
      } catch (error) {
        const message = (error as Error).message;
        if (sqlState(error) === LOCK_NOT_AVAILABLE) {
          options.onProgress?.({ step: 'waiting', attempt, reason: 'a long transaction holds events' });
          continue;
        }
        // Appends reached the bound during the scan: again, with a higher one.
        if (sqlState(error) === '55000' && message.includes('while the bound')) {
          if (round >= 5)
            throw new ConversionError(`${message}: appends outran five validations; use a larger --size`);
          break;
        }
        // The connection broke after the server committed the swap: it is done.
        if ((await eventsLayout(pool, schema).catch(() => 'unpartitioned')) === 'partitioned') {
          const partitions = await createPartitionsAhead(pool, schema);
          options.onProgress?.({ step: 'done', partitions });
          return { converted: true, partitions };
        }
        throw error;
      }
    }
    if (round >= 5) break;
  }
  throw new ConversionError(
    `events was not converted: its lock was busy for ${attempts} attempts of ${lockTimeoutMs} ms each; find the long transaction (outbatch doctor) and run the command again`,
  );
}

async function retryOnLockTimeout(attempts: number, options: ConvertOptions, step: () => Promise<void>) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await step();
    } catch (error) {
      if (sqlState(error) !== LOCK_NOT_AVAILABLE || attempt >= attempts) throw error;
      options.onProgress?.({ step: 'waiting', attempt, reason: 'a long transaction holds events' });
    }
  }
}

/**
 * The CHECK's bound: room for the appends that come during the scan, two partitions' worth
 * or half the table (the scan takes time in proportion to it), whichever is more, rounded
 * up to a multiple of the partition size. The old table holds the positions up to it.
 */
async function nextBound(pool: pg.Pool, q: string): Promise<{ bound: bigint; reached: bigint }> {
  const { rows } = await pool.query<{ reached: string; size: string }>(
    `SELECT (SELECT last_value FROM ${q}.events_position_seq)::text AS reached,
            (SELECT partition_size FROM ${q}.event_log)::text AS size`,
  );
  const reached = BigInt(rows[0]!.reached);
  const size = BigInt(rows[0]!.size);
  // The CHECK costs nothing and an append that reaches it fails: generous room.
  const room = reached / 2n > 2n * size ? reached / 2n : 2n * size;
  return { bound: ((reached + room) / size + 1n) * size, reached };
}

export function checkPartitionSize(size: unknown): asserts size is number {
  if (typeof size !== 'number' || !Number.isInteger(size) || size < 100 || size > 1e12) {
    throw new ValidationError(
      `partition size ${String(size)} is invalid: use a whole number of events from 100 to 1000000000000 (10000000 is the default)`,
    );
  }
}

/** Changes the size of the partitions created from now on; existing ones keep theirs. */
export async function setPartitionSize(db: Queryable, schema: string, size: number): Promise<void> {
  checkPartitionSize(size);
  await db.query(`UPDATE ${quoteSchema(schema)}.event_log SET partition_size = $1`, [size]);
}
