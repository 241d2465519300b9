/**
 * The `app.queues` API object (`outbatch queues ...`, the dashboard, scripts): checks what
 * an operator asks for, then writes through limits.ts. See docs/limits.md.
 */
import { type Actor, currentActor } from '../audit.js';
import type { Queryable } from '../db/queryable.js';
import { type DurationInput, parseDurationText, toMilliseconds } from '../duration.js';
import { ValidationError } from '../errors.js';
import {
  clearQueueLimits,
  type LimitsChange,
  listQueueLimits,
  pauseQueue,
  type QueueLimits,
  type StoredRate,
  setQueueLimits,
} from './limits.js';
import { checkInteger, checkQueue, toDate } from './validate.js';

/** At most `max` jobs start per `per` (a fixed window, opened by the first start). */
export interface RateLimit {
  max: number;
  per: DurationInput;
}

/** Limits of one queue; a field left out keeps its value, null removes that limit. */
export interface QueueLimitsOptions {
  /** Jobs of the queue running at once, across every worker. */
  concurrency?: number | null;
  /** Jobs of one group (defer's `group`) running at once. */
  groupConcurrency?: number | null;
  rate?: RateLimit | null;
  /** Per group: at most `max` starts per `per` for each group. */
  groupRate?: RateLimit | null;
}

export interface QueueControl {
  /** Sets (or with null removes) limits of a queue; returns them as stored, undefined if none is left. */
  configure(queue: string, limits: QueueLimitsOptions): Promise<QueueLimits | undefined>;
  /** Every limited queue, or one (undefined when it has no limits). */
  limits(): Promise<QueueLimits[]>;
  limits(queue: string): Promise<QueueLimits | undefined>;
  /** No job of the queue starts until `until` (or for `for`); running jobs go on. */
  pause(queue: string, options: { until: Date | string } | { for: DurationInput }): Promise<void>;
  /** Ends a pause of the queue and of its groups. */
  resume(queue: string): Promise<void>;
  /** Removes every limit and pause of the queue; returns whether there were any. */
  clear(queue: string): Promise<boolean>;
}

const MAX = 1_000_000;
const KNOWN = new Set(['concurrency', 'groupConcurrency', 'rate', 'groupRate']);

function checkRate(value: unknown, what: string): StoredRate | null {
  if (value === null) return null;
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new ValidationError(`${what} ${JSON.stringify(value)} is invalid: expected { max, per } or null`);
  }
  const { max, per, ...rest } = value as RateLimit;
  const extra = Object.keys(rest);
  if (extra.length > 0) {
    throw new ValidationError(`${what} has unknown field "${extra[0]}": expected { max, per }`);
  }
  const perMs = toMilliseconds(per, `${what}.per`);
  if (perMs < 1 || perMs > 366 * 86_400_000) {
    throw new ValidationError(`${what}.per ${JSON.stringify(per)} is invalid: expected 1 ms to a year`);
  }
  return { max: checkInteger(max, `${what}.max`, 1, MAX), perMs: Math.round(perMs) };
}

/** Checked limits; throws a one-line ValidationError naming the first bad field. */
export function checkLimits(limits: unknown): LimitsChange {
  if (limits === null || typeof limits !== 'object' || Array.isArray(limits)) {
    throw new ValidationError(
      'queue limits are invalid: expected an object such as { concurrency: 3, groupConcurrency: 1, rate: { max: 60, per: { hours: 1 } } }',
    );
  }
  for (const key of Object.keys(limits)) {
    if (!KNOWN.has(key)) {
      throw new ValidationError(
        `queue limit "${key}" is unknown: expected concurrency, groupConcurrency, rate or groupRate`,
      );
    }
  }
  const l = limits as QueueLimitsOptions;
  const count = (value: unknown, what: string) =>
    value === undefined || value === null ? value : checkInteger(value, what, 1, MAX);
  const change: LimitsChange = {
    concurrency: count(l.concurrency, 'concurrency'),
    groupConcurrency: count(l.groupConcurrency, 'groupConcurrency'),
    rate: l.rate === undefined ? undefined : checkRate(l.rate, 'rate'),
    groupRate: l.groupRate === undefined ? undefined : checkRate(l.groupRate, 'groupRate'),
  };
  if (Object.values(change).every((value) => value === undefined)) {
    throw new ValidationError(
      'queue limits are empty: give concurrency, groupConcurrency, rate or groupRate (null removes one)',
    );
  }
  return change;
}

export function makeQueueControl(deps: {
  schema: string;
  pool: () => Promise<Queryable>;
  actor?: () => Actor;
}): QueueControl {
  const { schema, pool } = deps;
  const actor = deps.actor ?? currentActor;
  async function limits(): Promise<QueueLimits[]>;
  async function limits(queue: string): Promise<QueueLimits | undefined>;
  async function limits(queue?: string): Promise<QueueLimits[] | QueueLimits | undefined> {
    if (queue === undefined) return listQueueLimits(await pool(), schema);
    return (await listQueueLimits(await pool(), schema, checkQueue(queue)))[0];
  }
  return {
    async configure(queue, options) {
      const name = checkQueue(queue);
      const change = checkLimits(options);
      return setQueueLimits(await pool(), schema, name, change, actor());
    },
    limits,
    async pause(queue, options) {
      const name = checkQueue(queue);
      const o = (options ?? {}) as { until?: Date | string; for?: DurationInput };
      if ((o.until === undefined) === (o.for === undefined)) {
        throw new ValidationError(`pause of queue "${name}" needs one of { until } or { for }`);
      }
      const until =
        o.until !== undefined
          ? toDate(o.until, 'until')
          : new Date(Date.now() + toMilliseconds(o.for, 'for'));
      await pauseQueue(await pool(), schema, name, until, actor());
    },
    async resume(queue) {
      await pauseQueue(await pool(), schema, checkQueue(queue), null, actor());
    },
    async clear(queue) {
      return clearQueueLimits(await pool(), schema, checkQueue(queue), actor());
    },
  };
}

/**
 * Limits written as text, as the CLI flags and the JSON API's parameters give them:
 * counts as digits, rates as `<max>/<duration>` (`60/1h`), and `none` to remove one.
 */
export function parseLimitsText(
  fields: {
    concurrency?: string;
    groupConcurrency?: string;
    rate?: string;
    groupRate?: string;
  },
  names: Record<keyof typeof fields, string>,
): QueueLimitsOptions {
  const count = (text: string, what: string): number | null => {
    if (text === 'none') return null;
    if (!/^\d{1,7}$/.test(text) || Number(text) < 1 || Number(text) > MAX) {
      throw new ValidationError(
        `${what} "${text}" is invalid: expected a whole number from 1 to ${MAX}, or none`,
      );
    }
    return Number(text);
  };
  const rate = (text: string, what: string): RateLimit | null => {
    if (text === 'none') return null;
    const match = /^(\d{1,7})\/(.+)$/.exec(text.trim());
    if (!match) {
      throw new ValidationError(
        `${what} "${text}" is invalid: expected <max>/<duration> such as 60/1h, or none`,
      );
    }
    return { max: count(match[1]!, `${what} max`) ?? 0, per: parseDurationText(match[2]!, `${what} per`) };
  };
  const limits: QueueLimitsOptions = {};
  if (fields.concurrency !== undefined) limits.concurrency = count(fields.concurrency, names.concurrency);
  if (fields.groupConcurrency !== undefined) {
    limits.groupConcurrency = count(fields.groupConcurrency, names.groupConcurrency);
  }
  if (fields.rate !== undefined) limits.rate = rate(fields.rate, names.rate);
  if (fields.groupRate !== undefined) limits.groupRate = rate(fields.groupRate, names.groupRate);
  if (Object.keys(limits).length === 0) {
    throw new ValidationError(`no limit given: expected at least one of ${Object.values(names).join(', ')}`);
  }
  return limits;
}
