/** Appending events: one, many, or many by COPY, with expected versions and idempotency keys. */
import type pg from 'pg';
import { quoteSchema } from '../db/identifiers.js';
import { runForArrays } from '../db/prepared.js';
import type { Queryable } from '../db/queryable.js';
import { sqlState } from '../db/retryable.js';
import { withTransaction } from '../db/transaction.js';
import {
  ConcurrencyError,
  type ExpectedVersion,
  IdempotencyConflictError,
  PartitionRaceError,
  ValidationError,
} from '../errors.js';
import { type Origin, withOrigin } from '../trace/origin.js';
import { type TraceOptions, type Tracing, traceOption } from '../trace/tracing.js';
import { COPY_FROM, copyCapable, makeCopyAppend } from './appendCopy.js';
import { eventsChannel } from './follow.js';
import { applyEventSchemas, type EventSchemaMap } from './schemas.js';
import {
  EVENT_COLUMNS,
  type EventRow,
  EXTRA_COLUMN,
  type StoredEvent,
  toStoredEvent,
} from './storedEvent.js';
import type { Upcasters } from './upcast.js';
import { expectedVersions, type NewEvent, type ValidatedBatch, validateEvents } from './validate.js';

/**
 * `traceparent`/`tracestate`: the W3C trace context the events record in
 * `metadata.$origin` (default: the job's or processor page's transaction they are
 * appended through, else the active OpenTelemetry context); see docs/tracing.md.
 */
export interface AppendOptions extends TraceOptions {
  /** A client inside your transaction: the events exist iff it commits. */
  client?: Queryable;
  /**
   * The stream's version before this append: a number (0 = empty), `'no_stream'` or
   * `'any'` (default). For an append to several streams, `{ "<stream>": version }`.
   */
  expectedVersion?: ExpectedVersion | Record<string, ExpectedVersion>;
}

/** A stored event; `duplicate` when its idempotency key was stored before (nothing new written). */
export interface AppendedEvent<D = unknown> extends StoredEvent<D> {
  duplicate: boolean;
}

export interface Append {
  <D>(event: NewEvent<D>, options?: AppendOptions): Promise<AppendedEvent<D>>;
  <D>(events: NewEvent<D>[], options?: AppendOptions): Promise<AppendedEvent<D>[]>;
}

/**
 * Appends through `append_events`, the same SQL function other languages and triggers
 * call, so both paths share one implementation of versions, idempotency and concurrency.
 * Two exceptions, picked by measurement (ops/bench/RESULTS.md), both without idempotency
 * keys or expectedVersion: one event goes through ONE_EVENT, a single statement doing the
 * same three things (bump the stream, insert, notify) ~15% faster than the function; a
 * batch of 1000 or more goes through COPY (appendCopy.ts), ~1.7x faster. The parity test
 * runs the SQL function and these paths over the same script.
 */
export function makeAppend(deps: {
  pool: () => Promise<pg.Pool>;
  schema: string;
  maxEventBytes: number;
  /** Says which version an event without `version` records: its type's current one. */
  upcasters: Upcasters;
  /** Validators by event type; undefined when the app registered none. */
  schemas?: EventSchemaMap;
  /** Where the events' origin comes from, and the append's span. */
  tracing: Tracing;
}) {
  const copyAppend = makeCopyAppend(deps);

  /** The COPY path when it applies (see appendCopy.ts), else undefined. */
  async function viaCopy(batch: ValidatedBatch, client: Queryable | undefined) {
    if (batch.count < COPY_FROM || batch.events.some((e) => e.idempotencyKey !== undefined)) return undefined;
    if (!client) return withTransaction(await deps.pool(), (own) => copyAppend(own, batch.events));
    const capable = copyCapable(client);
    if (!capable) return undefined;
    if (capable.getTransactionStatus() === 'T') return copyAppend(capable, batch.events);
    await capable.query('BEGIN');
    try {
      const rows = await copyAppend(capable, batch.events);
      await capable.query('COMMIT');
      return rows;
    } catch (error) {
      await capable.query('ROLLBACK').catch(() => {});
      throw error;
    }
  }

  const q = quoteSchema(deps.schema);
  const sql = `SELECT ${EVENT_COLUMNS}, duplicate FROM ${q}.append_events($1::jsonb, $2::jsonb)`;
  const ONE_EVENT = `
    WITH bumped AS (
      INSERT INTO ${q}.streams AS s (stream, version) VALUES ($1, 1)
      ON CONFLICT ON CONSTRAINT streams_pkey DO UPDATE SET version = s.version + 1
      RETURNING s.version
    ), inserted AS (
      INSERT INTO ${q}.events (stream, stream_version, type, data, metadata, type_version)
      SELECT $1, bumped.version, $2, $3::jsonb, $4::jsonb, $5::int4 FROM bumped
      RETURNING *
    )
    SELECT ${EVENT_COLUMNS}, false AS duplicate, pg_notify('${eventsChannel(deps.schema)}', '') AS notified
    FROM inserted`;

  async function append(given: NewEvent | NewEvent[], options: AppendOptions = {}) {
    const trace = traceOption(options);
    const { tracing } = deps;
    if (!tracing.settled) await tracing.ready;
    const origin = tracing.origin(trace, options.client);
    const otel = tracing.otel;
    if (otel === undefined) return appendEvents(given, options, origin);
    const attributes = Array.isArray(given)
      ? { 'outbatch.events.count': given.length }
      : {
          'outbatch.events.count': 1,
          'outbatch.stream': String(given?.stream),
          'outbatch.type': String(given?.type),
        };
    return otel.append(origin, attributes, (traced) => appendEvents(given, options, traced));
  }

  async function appendEvents(
    given: NewEvent | NewEvent[],
    options: AppendOptions,
    origin: Origin | undefined,
  ) {
    // Only an app that registered schemas pays for this step.
    const input = deps.schemas ? await applyEventSchemas(given, deps.schemas) : given;
    const batch = validateEvents(input, deps.maxEventBytes, deps.upcasters.current);
    const expected = expectedVersions(options.expectedVersion, batch.streams);
    if (batch.count === 0) return [];
    if (origin !== undefined) {
      // After the size check: an origin is at most ~700 bytes (a tracestate is capped at 512).
      const json = JSON.stringify(origin);
      for (const event of batch.events) event.metadata = withOrigin(event.metadata, json);
    }
    // One event without a key: ONE_EVENT, with the JSON text validation already produced.
    const first = batch.events[0]!;
    const single = batch.count === 1 && expected === undefined && first.idempotencyKey === undefined;
    // ONE_EVENT runs as a named (prepared) statement where node-postgres allows it: parsing
    // and planning its CTE on every call cost a measurable share of a single append.
    const name = single ? `outbatch_append_one_${deps.schema}` : undefined;
    // The SQL function's arguments are built only if it runs (not for COPY: ~3 ms per 10k).
    let values: unknown[] | undefined = single
      ? [first.stream, first.type, first.data, first.metadata, first.version]
      : undefined;
    const run = (db: Queryable) => {
      values ??= [batch.json(), expected === undefined ? null : JSON.stringify(expected)];
      return runForArrays(db, single ? ONE_EVENT : sql, values, name);
    };
    let rows: EventRow[];
    try {
      const copied = expected === undefined ? await viaCopy(batch, options.client) : undefined;
      if (copied) return Array.isArray(input) ? copied : copied[0];
      rows = await run(options.client ?? (await deps.pool()));
    } catch (error) {
      const conflict = appendFailure(error);
      // On our own connection the failed statement rolled back alone: once more sees the
      // stored event. In the caller's transaction only the caller can retry.
      const retryable =
        conflict instanceof IdempotencyConflictError || conflict instanceof PartitionRaceError;
      if (!retryable || options.client) throw conflict;
      rows = await run(await deps.pool()).catch((again) => {
        throw appendFailure(again);
      });
    }
    // As stored, not upcast: the caller wrote this shape, and an upcaster failing here would
    // fail an append whose events may already be committed.
    const stored = rows.map((row) =>
      Object.assign(toStoredEvent(row), { duplicate: row[EXTRA_COLUMN] as boolean }),
    );
    return Array.isArray(input) ? stored : stored[0];
  }
  return append as Append;
}

/** Maps the SQL function's errors to the library's typed errors. */
export function appendFailure(error: unknown): unknown {
  const code = sqlState(error);
  if (code === 'OB409') {
    const detail = JSON.parse((error as { detail?: string }).detail ?? '{}') as {
      stream: string;
      expected: ExpectedVersion;
      actual: number;
    };
    return new ConcurrencyError(detail.stream, detail.expected, detail.actual, { cause: error });
  }
  if (code === '23505' && isIdempotencyKeyIndex((error as { constraint?: string }).constraint)) {
    return new IdempotencyConflictError(
      'another transaction appended an event with the same idempotency key at the same time and committed first: retry the transaction to get the stored event',
      { cause: error },
    );
  }
  if (code === '23514' && (error as { table?: string }).table === 'events_overflow') {
    return new PartitionRaceError(
      'the append landed in events_overflow while a worker attached the partition for its position: nothing was stored; append again',
      { cause: error },
    );
  }
  if (code === '22023' || code === '23514' || code === '22P05') {
    return new ValidationError((error as Error).message, { cause: error });
  }
  return error;
}

/**
 * The unique indexes a racing duplicate key can fail on: event_keys' (the whole log's,
 * schema/029 and 030), or the one of the table from before 029, which keeps it unpartitioned
 * and as the partition events_from_1 (whichever index the two inserts meet first).
 */
function isIdempotencyKeyIndex(constraint: string | undefined): boolean {
  return (
    constraint === 'event_keys_pkey' ||
    constraint === 'events_idempotency_key_key' ||
    constraint === 'events_from_1_idempotency_key'
  );
}
