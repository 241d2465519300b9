/**
 * A processor as the user defines it: a name, which events, how it is triggered, and
 * the pipeline applied to each page. Checked at definition time.
 */
import type { Observable } from 'rxjs';
import type { Queryable } from '../db/queryable.js';
import { type DurationLike, toMilliseconds } from '../duration.js';
import { ValidationError } from '../errors.js';
import type { StoredEvent } from '../events/storedEvent.js';
import type { Logger } from '../log.js';
import { defineSchedule, type Schedule } from '../schedule/definition.js';

export interface ProcessorContext {
  /** The page's transaction: what is written through it commits with the checkpoint. */
  tx: Queryable;
  log: Logger;
  /** Aborted on shutdown: the page rolls back and is read again by the next run. */
  signal: AbortSignal;
  processor: string;
  /** The version being run: write to version-specific targets to rebuild beside the live one. */
  version: number;
}

export type Pipeline = (events$: Observable<StoredEvent>, ctx: ProcessorContext) => Observable<unknown>;

export type Trigger =
  | { cron: string; timezone?: string }
  | { every: DurationLike }
  | { onAppend: { debounce?: DurationLike } };

export interface ProcessorOptions {
  /** Only these event types (default: all). */
  types?: string[];
  /** Only streams starting with this (default: all). */
  streamPrefix?: string;
  /** Events per page (default 1000, at most 10,000). */
  batchSize?: number;
  trigger: Trigger;
  /** Runs that may fail on the same event before `onPoison` applies, and the backoff between them. */
  retry?: { attempts?: number; backoff?: { initial?: DurationLike; factor?: number; max?: DurationLike } };
  /** After the retry budget: `halt` (default; processor marked failed) or `skip` (event dead-lettered). */
  onPoison?: 'halt' | 'skip';
  /** A run yields after this long and the next run continues (default 60 s). */
  maxRunTime?: DurationLike;
  /** Queue the runs go to (default `processors`). */
  queue?: string;
}

export interface ProcessorDefinition {
  name: string;
  types: string[] | null;
  streamPrefix: string | null;
  batchSize: number;
  schedule: Schedule | null;
  onAppendDebounceMs: number | null;
  attempts: number;
  backoff: { initialMs: number; factor: number; maxMs: number };
  onPoison: 'halt' | 'skip';
  maxRunTimeMs: number;
  queue: string;
  pipeline: Pipeline;
}

const NAME = /^[A-Za-z0-9_.:/-]{1,100}$/;

function ms(name: string, field: string, value: DurationLike | undefined, fallback: number): number {
  return value === undefined ? fallback : toMilliseconds(value, `processor "${name}": ${field}`);
}

export function defineProcessor(
  name: unknown,
  options: ProcessorOptions,
  pipeline: Pipeline,
): ProcessorDefinition {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new ValidationError(
      `processor name ${JSON.stringify(name)} is invalid: use 1-100 letters, digits, '-', '_', '.', ':' and '/'`,
    );
  }
  if (options === null || typeof options !== 'object') {
    throw new ValidationError(`processor "${name}": options must be an object with a "trigger"`);
  }
  if (typeof pipeline !== 'function') {
    throw new ValidationError(
      `processor "${name}": pipeline must be a function (events$, ctx) => Observable`,
    );
  }
  const { types, streamPrefix } = options;
  if (
    types !== undefined &&
    (!Array.isArray(types) || types.length === 0 || types.some((t) => typeof t !== 'string' || !t))
  ) {
    throw new ValidationError(`processor "${name}": types must be a non-empty array of event type names`);
  }
  if (streamPrefix !== undefined && (typeof streamPrefix !== 'string' || streamPrefix.length === 0)) {
    throw new ValidationError(`processor "${name}": streamPrefix must be a non-empty string`);
  }
  const batchSize = options.batchSize ?? 1000;
  if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > 10_000) {
    throw new ValidationError(
      `processor "${name}": batchSize ${String(batchSize)} is invalid: use a whole number from 1 to 10000`,
    );
  }
  const attempts = options.retry?.attempts ?? 5;
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > 1000) {
    throw new ValidationError(`processor "${name}": retry.attempts must be a whole number from 1 to 1000`);
  }
  const factor = options.retry?.backoff?.factor ?? 2;
  if (typeof factor !== 'number' || !Number.isFinite(factor) || factor < 1) {
    throw new ValidationError(`processor "${name}": retry.backoff.factor must be a number >= 1`);
  }
  const onPoison = options.onPoison ?? 'halt';
  if (onPoison !== 'halt' && onPoison !== 'skip') {
    throw new ValidationError(`processor "${name}": onPoison must be "halt" or "skip"`);
  }
  const trigger = options.trigger as Record<string, unknown> | undefined;
  if (!trigger || typeof trigger !== 'object') {
    throw new ValidationError(
      `processor "${name}": trigger is required: { cron }, { every } or { onAppend: { debounce } }`,
    );
  }
  let schedule: Schedule | null = null;
  let onAppendDebounceMs: number | null = null;
  if ('onAppend' in trigger) {
    const onAppend = (trigger.onAppend ?? {}) as { debounce?: DurationLike };
    onAppendDebounceMs = ms(name, 'trigger.onAppend.debounce', onAppend.debounce, 200);
  } else if ('cron' in trigger || 'every' in trigger) {
    schedule = defineSchedule(
      `processor:${name}`,
      trigger as { cron?: string; every?: DurationLike; timezone?: string },
    );
  } else {
    throw new ValidationError(
      `processor "${name}": trigger must be { cron }, { every } or { onAppend: { debounce } }`,
    );
  }
  return {
    name,
    types: types ?? null,
    streamPrefix: streamPrefix ?? null,
    batchSize,
    schedule,
    onAppendDebounceMs,
    attempts,
    backoff: {
      initialMs: ms(name, 'retry.backoff.initial', options.retry?.backoff?.initial, 1_000),
      factor,
      maxMs: ms(name, 'retry.backoff.max', options.retry?.backoff?.max, 60_000),
    },
    onPoison,
    maxRunTimeMs: ms(name, 'maxRunTime', options.maxRunTime, 60_000),
    queue: options.queue ?? 'processors',
    pipeline,
  };
}
