/** `outbatch append`: one event from flags, or NDJSON events from standard input, in one transaction. */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import { withTransaction } from '../../db/transaction.js';
import { errorMessage, ValidationError } from '../../errors.js';
import type { AppendedEvent } from '../../events/append.js';
import { DEFAULT_MAX_EVENT_BYTES, type NewEvent, validateEvents } from '../../events/validate.js';
import { traceOption } from '../../trace/tracing.js';
import { runCommand } from '../context.js';
import { parseExpectedVersion, parseInteger, parseJson } from '../parse.js';

// Events per append_events call for NDJSON input; all chunks share one transaction.
const CHUNK = 5000;
const PROGRESS_FROM = 20_000;

interface AppendFlags {
  stream?: string;
  type?: string;
  data?: string;
  metadata?: string;
  idempotencyKey?: string;
  typeVersion?: string;
  expectedVersion?: string;
  ndjson?: boolean;
  traceparent?: string;
  tracestate?: string;
}

export function registerAppend(program: Command): void {
  program
    .command('append')
    .description('append one event, or NDJSON events from standard input (--ndjson), in one transaction')
    .option('--stream <name>', 'stream of the event')
    .option('--type <type>', 'event type')
    .option('--data <json|@file>', 'event data: JSON, or @path of a JSON file')
    .option('--metadata <json|@file>', 'event metadata: a JSON object, or @path')
    .option('--idempotency-key <key>', 'appending the same key again returns the stored event')
    .option(
      '--type-version <n>',
      "the version of the type's shape the data is in (default 1: the CLI does not load your app's upcasters)",
    )
    .option('--expected-version <n|no_stream|any>', 'fail unless the stream is at this version')
    .option('--ndjson', 'read events from standard input, one JSON object per line')
    .option('--traceparent <value>', 'W3C traceparent the events record in metadata.$origin')
    .option('--tracestate <value>', 'W3C tracestate that goes with --traceparent')
    .action((flags: AppendFlags, command: Command) =>
      runCommand(command, async ({ app, print, json }) => {
        const expectedVersion = parseExpectedVersion(flags.expectedVersion);
        const trace = { traceparent: flags.traceparent, tracestate: flags.tracestate };
        traceOption(trace, '--');
        const events = flags.ndjson ? await readNdjson(flags) : [singleEvent(flags)];
        if (events.length === 0)
          throw new ValidationError('no events on standard input: expected NDJSON lines');
        const db = await app.database();
        const progress = events.length >= PROGRESS_FROM && !json;
        const stored: AppendedEvent[] = await withTransaction(db.pool, async (client) => {
          const all: AppendedEvent[] = [];
          for (let i = 0; i < events.length; i += CHUNK) {
            all.push(
              ...(await app.events.append(events.slice(i, i + CHUNK), { client, expectedVersion, ...trace })),
            );
            if (progress) process.stderr.write(`appended ${all.length}/${events.length} events\n`);
          }
          return all;
        });
        const fresh = stored.filter((e) => !e.duplicate);
        const summary = {
          appended: fresh.length,
          duplicates: stored.length - fresh.length,
          streams: new Set(fresh.map((e) => e.stream)).size,
          firstPosition: fresh[0]?.position ?? null,
          lastPosition: fresh.at(-1)?.position ?? null,
        };
        if (!flags.ndjson) {
          const e = stored[0]!;
          print(
            `${e.duplicate ? 'already stored' : 'appended'}: position ${e.position}, ${e.stream}@${e.streamVersion}, checkpoint ${e.checkpoint}`,
            e,
          );
          return;
        }
        print(
          `appended ${summary.appended} event(s) to ${summary.streams} stream(s)` +
            (summary.duplicates ? `, ${summary.duplicates} already stored` : '') +
            (summary.firstPosition === null
              ? ''
              : `; positions ${summary.firstPosition}..${summary.lastPosition}`),
          summary,
        );
      }),
    );
}

function singleEvent(flags: AppendFlags): NewEvent {
  const missing = (['stream', 'type', 'data'] as const).filter((name) => flags[name] === undefined);
  if (missing.length > 0) {
    throw new ValidationError(
      `missing ${missing.map((m) => `--${m}`).join(', ')}: give --stream, --type and --data, or --ndjson with events on standard input`,
    );
  }
  const event: NewEvent = {
    stream: flags.stream!,
    type: flags.type!,
    data: jsonArgument('--data', flags.data!),
    ...(flags.metadata === undefined
      ? {}
      : { metadata: jsonArgument('--metadata', flags.metadata) as Record<string, unknown> }),
    ...(flags.idempotencyKey === undefined ? {} : { idempotencyKey: flags.idempotencyKey }),
    ...(flags.typeVersion === undefined
      ? {}
      : { version: parseInteger(flags.typeVersion, '--type-version') }),
  };
  validateEvents(event, DEFAULT_MAX_EVENT_BYTES);
  return event;
}

function jsonArgument(name: string, value: string): unknown {
  let text = value;
  if (value.startsWith('@')) {
    try {
      text = readFileSync(value.slice(1), 'utf8');
    } catch (error) {
      throw new ValidationError(`${name} ${value}: cannot read the file (${errorMessage(error)})`);
    }
  }
  return parseJson(text, name, 'quote it for the shell, or use @file');
}

/** Every line is parsed and checked before anything is written; a bad one names its line. */
async function readNdjson(flags: AppendFlags): Promise<NewEvent[]> {
  if (
    flags.stream ||
    flags.type ||
    flags.data ||
    flags.metadata ||
    flags.idempotencyKey ||
    flags.typeVersion
  ) {
    throw new ValidationError(
      '--ndjson takes events from standard input: leave out --stream, --type, --data',
    );
  }
  const events: NewEvent[] = [];
  let line = 0;
  for await (const text of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    line += 1;
    if (text.trim() === '') continue;
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(text);
    } catch (error) {
      throw new ValidationError(`line ${line}: not valid JSON (${errorMessage(error)}); nothing was written`);
    }
    const event = {
      ...parsed,
      idempotencyKey: parsed?.idempotencyKey ?? parsed?.idempotency_key,
    } as NewEvent & { idempotency_key?: unknown };
    delete event.idempotency_key;
    if (event.idempotencyKey === undefined) delete event.idempotencyKey;
    try {
      validateEvents(event, DEFAULT_MAX_EVENT_BYTES);
    } catch (error) {
      throw new ValidationError(`line ${line}: ${errorMessage(error)}; nothing was written`);
    }
    events.push(event);
  }
  return events;
}
