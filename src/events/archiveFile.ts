/**
 * The archive file: gzip-compressed NDJSON, one event per line, written and read back as
 * streams (memory stays flat whatever the size). Its SHA-256 is of the uncompressed
 * NDJSON, so it does not depend on the compressor's settings or version.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';

/** An event row as the archive reads it: every column as PostgreSQL's own text. */
export interface ArchiveRow {
  position: string;
  txId: string;
  stream: string;
  streamVersion: string;
  type: string;
  /** jsonb text, spliced in as it is: parsing it in JavaScript would round big numbers. */
  data: string;
  metadata: string;
  /** ISO 8601 in UTC with microseconds, formatted by PostgreSQL (a Date keeps milliseconds). */
  recordedAt: string;
  idempotencyKey: string | null;
  /** `to_jsonb(type_version)` text when the column exists. */
  typeVersion?: string;
}

/** One line, without its newline. Key order is fixed; tx_id is a string (xid8 passes 2^53). */
export function archiveLine(row: ArchiveRow): string {
  return (
    `{"position":${row.position},"tx_id":"${row.txId}","stream":${JSON.stringify(row.stream)},` +
    `"stream_version":${row.streamVersion},"type":${JSON.stringify(row.type)},` +
    `"data":${row.data},"metadata":${row.metadata},"recorded_at":"${row.recordedAt}",` +
    `"idempotency_key":${row.idempotencyKey === null ? 'null' : JSON.stringify(row.idempotencyKey)}` +
    (row.typeVersion === undefined ? '}' : `,"type_version":${row.typeVersion}}`)
  );
}

/**
 * Writes lines to `file` through a temporary file beside it, renamed over `file` only once
 * every byte is on disk (fsync): a crash leaves either no file, the temporary one, or the
 * whole file — never a short file under the final name.
 */
export async function writeArchive(
  file: string,
  lines: AsyncIterable<string>,
): Promise<{ sha256: string; lines: number }> {
  const temporary = `${file}.partial`;
  const hash = createHash('sha256');
  let count = 0;
  async function* text() {
    for await (const line of lines) {
      const chunk = `${line}\n`;
      hash.update(chunk);
      count += 1;
      yield chunk;
    }
  }
  // pipeline: the generator is pulled only as fast as gzip and the disk take it.
  await pipeline(Readable.from(text()), createGzip(), createWriteStream(temporary));
  const handle = await fs.open(temporary, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.rename(temporary, file);
  return { sha256: hash.digest('hex'), lines: count };
}

/** Every line of an archive file, in order, with the SHA-256 of the uncompressed text at the end. */
export async function* readArchive(file: string): AsyncGenerator<string, string> {
  const hash = createHash('sha256');
  // Opened first, so a missing or unreadable file fails here, as an error of this call.
  const raw = (await fs.open(file, 'r')).createReadStream();
  const input = raw.pipe(createGunzip());
  raw.on('error', (error) => input.destroy(error));
  // readline splits on \r too; archive lines never hold a raw \r (JSON escapes it).
  const reader = createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY });
  try {
    for await (const line of reader) {
      hash.update(`${line}\n`);
      yield line;
    }
  } finally {
    // A reader that stopped early (a malformed line): the file is closed all the same.
    input.destroy();
    raw.destroy();
  }
  return hash.digest('hex');
}

/** Count and SHA-256 of a file as read back, and how many of its lines fall in each range. */
export async function verifyArchive(
  file: string,
  ranges: { from: bigint; to: bigint }[],
): Promise<{ sha256: string; lines: number; perRange: number[] }> {
  const perRange = ranges.map(() => 0);
  let lines = 0;
  const reading = readArchive(file);
  for (;;) {
    const next = await reading.next();
    if (next.done) return { sha256: next.value, lines, perRange };
    lines += 1;
    const position = BigInt(/^\{"position":(\d+),/.exec(next.value)?.[1] ?? '-1');
    const at = ranges.findIndex((range) => position >= range.from && position < range.to);
    if (at >= 0) perRange[at]! += 1;
  }
}
