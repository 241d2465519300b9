/** `app.events`, the outbox: append, read, follow, get, stream, last, head, wired to the pool. */
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { Database } from '../db/database.js';
import type { Reads } from '../db/readReplica.js';
import { ValidationError } from '../errors.js';
import type { Tracing } from '../trace/tracing.js';
import type { StandardSchemaV1 } from '../typing/standardSchema.js';
import { makeAppend } from './append.js';
import { makeArchive } from './archive.js';
import { makeFollow } from './follow.js';
import { makeGet } from './get.js';
import { makeHead } from './head.js';
import { makeImport } from './importArchive.js';
import { makeLast } from './last.js';
import { eventLogStatus } from './logStatus.js';
import { type ConvertOptions, convertToPartitioned, setPartitionSize } from './partitioning.js';
import { makeRead } from './read.js';
import { rebaseTxIds } from './rebaseTxIds.js';
import { makeRetention } from './retention.js';
import { eventSchemaMap } from './schemas.js';
import { makeStream } from './stream.js';
import { checkTxIdHorizon } from './txIdHorizon.js';
import type { Upcasters } from './upcast.js';
import { DEFAULT_MAX_EVENT_BYTES } from './validate.js';

export interface EventsOptions {
  /** Largest `data` + `metadata` JSON per event, in bytes (default 1 MB). */
  maxEventBytes?: number;
  /**
   * A Standard Schema validator (zod, valibot…) per event type: `append` refuses data that
   * fails it with a ValidationError, before anything is written, and stores its output.
   * Types without one are not validated (at no cost). See docs/typing.md.
   */
  schemas?: Record<string, StandardSchemaV1>;
}

/** `app.events`: the outbox. Every operation takes the pool lazily, on first use. */
export function makeEvents(deps: {
  database: () => Promise<Database>;
  /** Where read, stream and follow read (a replica with `readUrl`); appends and the rest use the database. */
  reads: () => Promise<Reads>;
  schema: string;
  log: Logger;
  clock: Clock;
  /** The app's upcasters: every read brings events to their type's current version, every append records it. */
  upcasters: Upcasters;
  options?: EventsOptions;
  tracing: Tracing;
}) {
  const maxEventBytes = deps.options?.maxEventBytes ?? DEFAULT_MAX_EVENT_BYTES;
  if (!Number.isSafeInteger(maxEventBytes) || maxEventBytes < 1) {
    throw new ValidationError(
      `maxEventBytes is ${JSON.stringify(maxEventBytes)}: expected a whole number of bytes >= 1`,
    );
  }
  const schemas = eventSchemaMap(deps.options?.schemas);
  const pool = async () => (await deps.database()).pool;
  const shared = { pool, schema: deps.schema, upcasters: deps.upcasters };
  // get, last and head stay on the primary: a service reading back what it just appended
  // must find it, and they are single-row lookups.
  const replicated = {
    pool: async () => (await deps.reads()).pool,
    schema: deps.schema,
    upcasters: deps.upcasters,
  };
  const read = makeRead(replicated);
  return {
    append: makeAppend({ ...shared, maxEventBytes, schemas, tracing: deps.tracing }),
    read,
    stream: makeStream(replicated),
    head: makeHead(shared),
    /** The newest events, oldest first (what `outbatch events tail` prints). */
    last: makeLast(shared),
    /** One event by position. */
    get: makeGet(shared),
    follow: makeFollow({
      read,
      // LISTEN on the primary, or its direct listenUrl behind a pooler (a standby cannot
      // LISTEN); a wake that comes before the replica has the rows reads nothing, and the
      // poll timer reads again.
      url: async () => (await deps.database()).listenTarget(),
      schema: deps.schema,
      log: deps.log.child({ component: 'events' }),
    }),
    /** Retention policies: which events an archive may take out; see retention.ts. */
    retention: makeRetention({ pool, schema: deps.schema }),
    /** Archives whole partitions to a verified file and drops them; see archive.ts. */
    archive: makeArchive({ pool, schema: deps.schema, log: deps.log.child({ component: 'archive' }) }),
    /** Brings an archive file back, into this app's schema; see importArchive.ts. */
    importArchive: makeImport({ pool, schema: deps.schema, log: deps.log.child({ component: 'import' }) }),
    /** Throws TxIdHorizonError after a logical restore; see txIdHorizon.ts. */
    checkTxIdHorizon: async () => checkTxIdHorizon(await pool(), deps.schema),
    /** Converts a stored, unpartitioned log to the partitioned layout, online; see docs/event-log.md. */
    partition: async (options?: ConvertOptions) => convertToPartitioned(await pool(), deps.schema, options),
    /** Events per partition for partitions created from now on. */
    setPartitionSize: async (size: number) => setPartitionSize(await pool(), deps.schema, size),
    /** Partitions, size, archived horizon (estimates: no count over the whole log). */
    logStatus: async () => eventLogStatus(await pool(), deps.schema),
    /** The way out of a TxIdHorizonError (stop workers first); see rebaseTxIds.ts. */
    rebaseTxIds: async (onProgress?: (consumed: number, total: number) => void) =>
      rebaseTxIds(await pool(), deps.schema, onProgress),
  };
}

export type Events = ReturnType<typeof makeEvents>;
