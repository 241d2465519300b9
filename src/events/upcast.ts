/**
 * Upcasting: an event type's versions, and the functions that turn an older version's
 * `data` into the next one's on read. Stored rows are never rewritten; every reader of
 * the app (read, stream, get, last, follow, processor pages, re-drives) sees the current
 * shape. One registry per app, handed to the readers by their factories.
 */
import { errorMessage, OutbatchError, ValidationError } from '../errors.js';
import type { StoredEvent } from './storedEvent.js';

/**
 * Turns `data` of version `fromVersion` into version `fromVersion + 1`. `event` is the
 * event as read so far (its `version` is `fromVersion`, its `data` is `data`): context to
 * read, not to change. Synchronous, pure and total: it must accept every stored event of
 * that version, and return the new data (a JSON value) without touching the argument.
 */
export type Upcaster<From = unknown, To = unknown> = (data: From, event: StoredEvent<From>) => To;

/** An upcaster threw (or returned no data) on a stored event: the read fails, naming the event. */
export class UpcastError extends OutbatchError {
  constructor(
    readonly type: string,
    readonly fromVersion: number,
    readonly position: bigint,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('OUTBATCH_UPCAST', message, options);
  }
}

/** The largest version PostgreSQL's `integer` column holds. */
export const MAX_TYPE_VERSION = 2_147_483_647;

export interface Upcasters {
  /** Registers the step from `fromVersion` to `fromVersion + 1` of `type`; see docs/upcasting.md. */
  register<From = unknown, To = unknown>(type: string, fromVersion: number, fn: Upcaster<From, To>): void;
  /** The version an append records when the event does not say: the highest registered `fromVersion + 1`, else 1. */
  current(type: string): number;
  /** Brings each event older than its type's current version up to it, in place. Throws UpcastError. */
  apply(events: StoredEvent[]): void;
}

export function makeUpcasters(): Upcasters {
  // Per type, the steps in order: index i turns version i + 1 into i + 2.
  const chains = new Map<string, Upcaster[]>();
  // Set by the first append or read: a chain that grew after that would have let an
  // append record an older version than the shape its code wrote.
  let used = false;

  function step(event: StoredEvent, chain: Upcaster[]): void {
    const from = event.version;
    let data: unknown;
    try {
      data = chain[from - 1]!(event.data, event);
    } catch (error) {
      throw new UpcastError(
        event.type,
        from,
        event.position,
        `upcasting ${event.type} event at position ${event.position} from version ${from} to ${from + 1} failed: ${errorMessage(error)}: fix the upcaster so it accepts every stored version-${from} event (check with "outbatch events show ${event.position}")`,
        { cause: error },
      );
    }
    if (data === undefined || typeof (data as { then?: unknown } | null)?.then === 'function') {
      throw new UpcastError(
        event.type,
        from,
        event.position,
        `upcasting ${event.type} event at position ${event.position} from version ${from} to ${from + 1} returned ${data === undefined ? 'undefined' : 'a Promise'}: an upcaster returns the new data synchronously (null for none)`,
      );
    }
    event.data = data;
    event.version = from + 1;
  }

  return {
    register(type, fromVersion, fn) {
      if (typeof type !== 'string' || type.length === 0) {
        throw new ValidationError(`upcast type is ${JSON.stringify(type)}: expected an event type name`);
      }
      if (!Number.isSafeInteger(fromVersion) || fromVersion < 1 || fromVersion >= MAX_TYPE_VERSION) {
        throw new ValidationError(
          `upcast("${type}", ${JSON.stringify(fromVersion)}) has an invalid version: expected a whole number >= 1, the version the function upcasts from`,
        );
      }
      if (typeof fn !== 'function') {
        throw new ValidationError(
          `upcast("${type}", ${fromVersion}) needs a function (data, event) => newData as its third argument`,
        );
      }
      if (used) {
        throw new ValidationError(
          `upcast("${type}", ${fromVersion}) came after the app appended or read events: register upcasters where the app is defined, before first use`,
        );
      }
      const chain = chains.get(type) ?? [];
      if (fromVersion <= chain.length) {
        throw new ValidationError(
          `upcast("${type}", ${fromVersion}) is registered twice: one function per type and version`,
        );
      }
      if (fromVersion > chain.length + 1) {
        throw new ValidationError(
          `upcast("${type}", ${fromVersion}) leaves a gap: register upcast("${type}", ${chain.length + 1}) first (each type's chain starts at 1, in version order)`,
        );
      }
      chain.push(fn as Upcaster);
      chains.set(type, chain);
    },
    current(type) {
      used = true;
      return (chains.get(type)?.length ?? 0) + 1;
    },
    apply(events) {
      used = true;
      // Without upcasters a read costs one comparison per page, not per row.
      if (chains.size === 0) return;
      for (const event of events) {
        const chain = chains.get(event.type);
        if (chain === undefined) continue;
        // A version above the chain (written by newer code) is left as stored: there is no
        // way down, and `version` tells the reader.
        while (event.version <= chain.length) step(event, chain);
      }
    },
  };
}
