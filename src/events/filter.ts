/** Event filters (types, stream prefix) and page limits, as checked SQL parameters. */
import { ValidationError } from '../errors.js';

/** Which events a reader wants; every field optional. */
export interface EventFilter {
  /** Only these event types. */
  types?: string[];
  /** Only streams whose name starts with this. */
  streamPrefix?: string;
}

export const MAX_PAGE = 100_000;

/** The filter as SQL parameters: null means "no filter" (the statements test `$n IS NULL`). */
export function filterParams(filter: EventFilter): [string[] | null, string | null] {
  const { types, streamPrefix } = filter;
  if (types !== undefined) {
    if (!Array.isArray(types) || types.some((t) => typeof t !== 'string' || t.length === 0)) {
      throw new ValidationError(
        `types is ${JSON.stringify(types)}: expected an array of non-empty type names`,
      );
    }
  }
  if (streamPrefix !== undefined && (typeof streamPrefix !== 'string' || streamPrefix.length === 0)) {
    throw new ValidationError(
      `streamPrefix is ${JSON.stringify(streamPrefix)}: expected a non-empty string (leave it out for every stream)`,
    );
  }
  return [types && types.length > 0 ? types : null, streamPrefix ?? null];
}

export function checkLimit(limit: unknown, name = 'limit'): number {
  if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 1 || limit > MAX_PAGE) {
    throw new ValidationError(
      `${name} is ${JSON.stringify(limit)}: expected a whole number from 1 to ${MAX_PAGE}`,
    );
  }
  return limit;
}
