/**
 * `outbatch events import <file>`: an archive file back into a schema of the operator's
 * choice (an audit, or a rebuild from scratch), every column as it was: positions, tx ids,
 * recorded_at to the microsecond. docs/event-log.md, "Archive and import", is the
 * operator's side.
 *
 * Two passes over the file. The first reads it whole and checks every line, the count
 * and the SHA-256 (against the event_archives rows that name the file, when there are
 * some): a bad file is refused before anything is written. The second COPYs it in
 * batches into a temporary table and moves the rows into events with one INSERT, all in
 * one transaction: a refusal there (a position or an idempotency key already stored), a
 * failure or a lost connection leaves nothing behind, and the import can simply be run
 * again. Values reach PostgreSQL as the line's own JSON text and are typed there
 * (jsonb_populate_record), never through JavaScript numbers, so nothing is rounded.
 */

import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { type Actor, currentActor, recordAudit } from '../audit.js';
import { quoteSchema } from '../db/identifiers.js';
import { assertMigrated, migrate, migrationStatus } from '../db/migrate.js';
import { withTransaction } from '../db/transaction.js';
import { errorMessage, OutbatchError, ValidationError } from '../errors.js';
import type { Logger } from '../log.js';
import { readArchive } from './archiveFile.js';
import { eventsLayout } from './partitioning.js';
import { readTxIdHorizon } from './txIdHorizon.js';

export interface ImportOptions {
  file: string;
  /**
   * The schema that archived the file: its event_archives rows naming the file (same path,
   * or same file name) are checked against it. The target schema's rows always are.
   */
  archivedIn?: string;
  /** Who, for the audit log (default: this process's user and host). */
  by?: Actor;
  /** `phase`: 'verify' while the file is checked, 'copy' while it is written. */
  onProgress?: (phase: 'verify' | 'copy', done: number, total: number) => void;
}

export interface ImportResult {
  schema: string;
  events: number;
  /** Lowest and highest position imported. */
  first?: bigint;
  last?: bigint;
  sha256: string;
  /** event_archives rows the file was checked against (0: none named it). */
  checkedAgainst: number;
  partitionsCreated: string[];
  /**
   * Set when the imported transaction ids are ahead of this server's (a file from another
   * cluster): gap-safe readers would not see those events until the ids are rebased.
   */
  txIdsAhead?: { highestStored: bigint; nextServer: bigint };
}

interface Scan {
  lines: number;
  sha256: string;
  first?: bigint;
  last?: bigint;
  typeVersion: boolean;
}

const BATCH = 10_000;

function malformed(file: string, line: number, what: string): ValidationError {
  return new ValidationError(
    `${file} line ${line} is not an archived event (${what}): nothing was imported; import the file "outbatch events archive" wrote, unchanged`,
  );
}

/** The shape of one line; the values are typed by PostgreSQL, which refuses the rest. */
function checkLine(file: string, n: number, text: string): { position: bigint; typeVersion: boolean } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw malformed(file, n, errorMessage(error));
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw malformed(file, n, 'not a JSON object');
  }
  const e = value as Record<string, unknown>;
  const need = (ok: boolean, what: string) => {
    if (!ok) throw malformed(file, n, what);
  };
  need(
    Number.isSafeInteger(e.position) && (e.position as number) >= 1,
    'position is not a whole number >= 1',
  );
  need(typeof e.tx_id === 'string' && /^\d{1,20}$/.test(e.tx_id), 'tx_id is not a transaction id as text');
  need(typeof e.stream === 'string' && e.stream.length > 0, 'stream is not a non-empty string');
  need(
    Number.isSafeInteger(e.stream_version) && (e.stream_version as number) >= 1,
    'stream_version is not >= 1',
  );
  need(typeof e.type === 'string' && e.type.length > 0, 'type is not a non-empty string');
  need('data' in e, 'data is missing');
  need(
    typeof e.metadata === 'object' && e.metadata !== null && !Array.isArray(e.metadata),
    'metadata is not an object',
  );
  need(
    typeof e.recorded_at === 'string' && /^\d{4}-\d{2}-\d{2}T/.test(e.recorded_at),
    'recorded_at is not an ISO time',
  );
  need(
    e.idempotency_key === null || typeof e.idempotency_key === 'string',
    'idempotency_key is not a string or null',
  );
  return { position: BigInt(e.position as number), typeVersion: 'type_version' in e };
}

async function scan(file: string, onLine: (n: number) => void): Promise<Scan> {
  const result: Scan = { lines: 0, sha256: '', typeVersion: false };
  const reading = readArchive(file);
  try {
    for (;;) {
      const next = await reading.next();
      if (next.done) {
        result.sha256 = next.value;
        return result;
      }
      result.lines += 1;
      const line = checkLine(file, result.lines, next.value);
      if (result.lines === 1) result.typeVersion = line.typeVersion;
      else if (line.typeVersion !== result.typeVersion)
        throw malformed(file, result.lines, 'type_version present on some lines only');
      if (result.first === undefined || line.position < result.first) result.first = line.position;
      if (result.last === undefined || line.position > result.last) result.last = line.position;
      onLine(result.lines);
    }
  } catch (error) {
    if (error instanceof ValidationError) throw error;
    const code = (error as { code?: string }).code;
    throw new ValidationError(
      code === 'ENOENT' || code === 'EACCES' || code === 'EISDIR'
        ? `${file} cannot be read (${code}): give the path of an archive file`
        : `${file} is not a gzip NDJSON archive (${errorMessage(error)}): nothing was imported`,
    );
  }
}

/** COPY text format: backslash, tab, newline and carriage return escaped. */
function copyText(value: string): string {
  return /[\\\t\n\r]/.test(value)
    ? value.replace(/[\\\t\n\r]/g, (c) =>
        c === '\\' ? '\\\\' : c === '\t' ? '\\t' : c === '\n' ? '\\n' : '\\r',
      )
    : value;
}

export function makeImport(deps: { pool: () => Promise<pg.Pool>; schema: string; log: Logger }) {
  const q = quoteSchema(deps.schema);

  /** The rows of `schema`'s event_archives that name the file, summed: what it should hold. */
  async function recorded(db: pg.Pool, schema: string, file: string) {
    const qs = quoteSchema(schema);
    const exists = await db.query<{ t: string | null }>(`SELECT to_regclass($1)::text AS t`, [
      `${qs}.event_archives`,
    ]);
    if (!exists.rows[0]?.t) {
      throw new ValidationError(
        `schema "${schema}" has no event_archives table: --archived-in names the schema the archive was made in`,
      );
    }
    const { rows } = await db.query<{ rows: number; events: string | null; sha256: string[] | null }>(
      `SELECT count(*)::int AS rows, sum(events)::text AS events, array_agg(DISTINCT sha256) AS sha256
       FROM ${qs}.event_archives WHERE file = $1 OR regexp_replace(file, '^.*/', '') = $2`,
      [file, path.basename(file)],
    );
    return rows[0]!;
  }

  /** Range partitions so that [first, last] lands in none of events_overflow. */
  async function ensurePartitions(db: pg.Pool, first: bigint, last: bigint): Promise<string[]> {
    const { rows } = await db.query<{ lower: string; upper: string }>(
      `SELECT lower::text, upper::text FROM ${q}.event_partition_bounds ORDER BY lower`,
    );
    const size = BigInt(
      (await db.query<{ size: string }>(`SELECT partition_size::text AS size FROM ${q}.event_log`)).rows[0]!
        .size,
    );
    const wanted: [bigint, bigint][] = [];
    let cursor = first;
    for (const row of rows) {
      const [lower, upper] = [BigInt(row.lower), BigInt(row.upper)];
      if (cursor > last) break;
      if (upper <= cursor) continue;
      if (lower > cursor) wanted.push([cursor, lower < last + 1n ? lower : last + 1n]);
      cursor = upper;
    }
    for (; cursor <= last; cursor += size) wanted.push([cursor, cursor + size]);
    const created: string[] = [];
    // Each in a short transaction of its own: ATTACH takes ACCESS EXCLUSIVE on
    // events_overflow, which every read of events waits for; held for the whole import, it
    // would stop the schema's readers that long. Dropped again if the import then fails.
    for (const [from, to] of wanted) {
      const name = await withTransaction(db, async (tx) => {
        await tx.query(`SELECT set_config('lock_timeout', '5s', true)`);
        const { rows: made } = await tx.query<{ name: string }>(
          `SELECT ${q}.create_event_partition($1, $2) AS name`,
          [from.toString(), to.toString()],
        );
        return made[0]!.name;
      });
      created.push(name);
    }
    return created;
  }

  return async function importArchive(options: ImportOptions): Promise<ImportResult> {
    if (typeof options.file !== 'string' || options.file.length === 0) {
      throw new ValidationError('the archive file is required: outbatch events import <file.ndjson.gz>');
    }
    const file = path.resolve(options.file);
    if (options.archivedIn !== undefined) quoteSchema(options.archivedIn);
    const db = await deps.pool();
    const found = await scan(file, (n) => {
      if (n % 10_000 === 0) options.onProgress?.('verify', n, n);
    });
    options.onProgress?.('verify', found.lines, found.lines);

    // The schema that archived it first: a refusal there leaves the target untouched.
    const against = [
      ...(options.archivedIn && options.archivedIn !== deps.schema ? [options.archivedIn] : []),
      deps.schema,
    ];
    let checkedAgainst = 0;
    for (const schema of against) {
      if (schema === deps.schema) {
        // The target: migrated first when it is new (or empty); refused when it is behind.
        const status = await migrationStatus(db, deps.schema);
        if (status.applied.length === 0) await migrate(db, deps.schema, deps.log);
        else await assertMigrated(db, deps.schema);
      }
      const rows = await recorded(db, schema, file);
      if (rows.rows === 0) continue;
      checkedAgainst += rows.rows;
      if (
        Number(rows.events) !== found.lines ||
        rows.sha256?.length !== 1 ||
        rows.sha256[0] !== found.sha256
      ) {
        throw new ValidationError(
          `${file} does not match its archive record in schema "${schema}" (${found.lines} events with SHA-256 ${found.sha256} read, ${rows.events} events with SHA-256 ${rows.sha256?.join(', ')} recorded): nothing was imported; find the original file`,
        );
      }
    }
    if ((await eventsLayout(db, deps.schema)) !== 'partitioned') {
      throw new ValidationError(
        `schema "${deps.schema}" has its events table not partitioned yet: run "outbatch events partition" on it first, then import`,
      );
    }
    if (found.typeVersion) {
      const { rows } = await db.query(
        `SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = 'type_version' AND NOT attisdropped`,
        [`${q}.events`],
      );
      if (rows.length === 0) {
        throw new ValidationError(
          `${file} has event type versions, which schema "${deps.schema}" has no column for: migrate it with this outbatch version first`,
        );
      }
    }
    const result: ImportResult = {
      schema: deps.schema,
      events: found.lines,
      first: found.first,
      last: found.last,
      sha256: found.sha256,
      checkedAgainst,
      partitionsCreated: [],
    };
    if (found.lines === 0) return result;
    const [first, last] = [found.first!, found.last!];
    // Back into the schema that archived them (the live log): not supported, the horizon,
    // the keys and the processors there all assume those events left for good.
    const own = await db.query<{ partition: string; file: string }>(
      `SELECT partition, file FROM ${q}.event_archives WHERE from_position <= $2 AND to_position > $1 LIMIT 1`,
      [first.toString(), last.toString()],
    );
    if (own.rows[0]) {
      throw new ValidationError(
        `schema "${deps.schema}" archived these positions itself (partition ${own.rows[0].partition} to ${own.rows[0].file}): importing them back into the live log is not supported; import into a separate schema with --schema <name>`,
      );
    }
    result.partitionsCreated = await ensurePartitions(db, first, last);
    try {
      await copyIn(db, file, found, first, last, checkedAgainst, options);
    } catch (error) {
      await dropCreated(db, result.partitionsCreated);
      throw error;
    }
    const horizon = await readTxIdHorizon(db, deps.schema);
    if (horizon.highestStored >= horizon.nextServer) result.txIdsAhead = horizon;
    deps.log.info(
      { file, events: found.lines, schema: deps.schema, by: (options.by ?? currentActor()).actor },
      `imported ${found.lines} events from ${file}`,
    );
    return result;
  };

  /**
   * A refused import takes away the partitions it made for itself, so that it leaves the
   * schema as it found it. Only while they are still empty (drop_event_partitions counts
   * under a SHARE lock): a live schema's appends may have reached one meanwhile. Best
   * effort: left in place, they are empty partitions like those the worker makes ahead.
   */
  async function dropCreated(db: pg.Pool, names: string[]): Promise<void> {
    if (names.length === 0) return;
    await withTransaction(db, async (tx) => {
      await tx.query(`SELECT set_config('lock_timeout', '5s', true)`);
      await tx.query(`SELECT ${q}.drop_event_partitions($1::text[], $2::bigint[])`, [
        names,
        names.map(() => '0'),
      ]);
    }).catch((error) =>
      deps.log.warn({ err: error, partitions: names }, 'the refused import left the partitions it made'),
    );
  }

  async function copyIn(
    db: pg.Pool,
    file: string,
    found: Scan,
    first: bigint,
    last: bigint,
    checkedAgainst: number,
    options: ImportOptions,
  ): Promise<void> {
    let copied = 0;
    await withTransaction(db, async (tx) => {
      // As long as the file is big, whatever statement_timeout the role carries.
      await tx.query('SET LOCAL statement_timeout = 0');
      await tx.query(
        `CREATE TEMP TABLE outbatch_import (position bigint NOT NULL, line jsonb NOT NULL) ON COMMIT DROP`,
      );
      let batch: string[] = [];
      const flush = async () => {
        if (batch.length === 0) return;
        await pipeline(
          Readable.from([batch.join('')]),
          tx.query(copyFrom('COPY outbatch_import (position, line) FROM STDIN')),
        );
        copied += batch.length;
        batch = [];
        options.onProgress?.('copy', copied, found.lines);
      };
      const reading = readArchive(file);
      for (;;) {
        const next = await reading.next();
        if (next.done) {
          // The file changed between the two passes: refused, the transaction rolls back.
          if (next.value !== found.sha256) {
            throw new ValidationError(
              `${file} changed while it was imported: nothing was imported; run it again`,
            );
          }
          break;
        }
        const position =
          /^\{"position":(\d+),/.exec(next.value)?.[1] ?? String(JSON.parse(next.value).position);
        batch.push(`${position}\t${copyText(next.value)}\n`);
        if (batch.length === BATCH) await flush();
      }
      await flush();
      const taken = await tx.query<{ position: string }>(
        `SELECT s.position::text AS position FROM outbatch_import s
         WHERE EXISTS (SELECT 1 FROM ${q}.events e WHERE e.position = s.position) LIMIT 1`,
      );
      if (taken.rows[0]) {
        throw new ValidationError(
          `position ${taken.rows[0].position} already exists in schema "${deps.schema}": nothing was imported; import into an empty schema, or one without these positions`,
        );
      }
      try {
        // The events' own row type: every column, typed from the line's JSON by name.
        await tx.query(
          `INSERT INTO ${q}.events
           SELECT r.* FROM outbatch_import s, jsonb_populate_record(NULL::${q}.events, '{"type_version": 1}'::jsonb || s.line) r ORDER BY s.position`,
        );
        // Their idempotency keys are registered as append_events() registers keys, so an
        // append with one of them returns the imported event; a key already stored refuses
        // the import like a stored position.
        await tx.query(
          `INSERT INTO ${q}.event_keys (idempotency_key, position)
           SELECT line->>'idempotency_key', position FROM outbatch_import WHERE line->>'idempotency_key' IS NOT NULL`,
        );
      } catch (error) {
        const e = error as { code?: string; constraint?: string; detail?: string };
        if (e.code === '23505') {
          throw new ValidationError(
            `the file repeats a stored value (${e.detail ?? e.constraint ?? 'a unique key'}): nothing was imported; import into an empty schema`,
          );
        }
        throw new OutbatchError(
          'OUTBATCH_IMPORT',
          `${file} could not be imported (${errorMessage(error)}): nothing was imported`,
          { cause: error },
        );
      }
      // Streams continue where the imported events end, so an append there is versioned on.
      await tx.query(
        `INSERT INTO ${q}.streams AS t (stream, version)
         SELECT line->>'stream', max((line->>'stream_version')::bigint) FROM outbatch_import GROUP BY 1
         ON CONFLICT (stream) DO UPDATE SET version = greatest(t.version, excluded.version)`,
      );
      // Not rolled back with the transaction (sequences never are): at worst it only
      // moves the next position up, which leaves a gap, as a rolled back append does.
      await tx.query(
        `SELECT setval($1::regclass, greatest($2::bigint, (SELECT last_value FROM ${q}.events_position_seq)))`,
        [`${q}.events_position_seq`, last.toString()],
      );
      await recordAudit(tx, q, options.by ?? currentActor(), 'events.import', 'events', {
        file,
        sha256: found.sha256,
        events: found.lines,
        first: first.toString(),
        last: last.toString(),
        checkedAgainst,
      });
    });
  }
}
