/** How long a failed job waits before its next attempt. */

import { type DurationInput, toMilliseconds } from '../duration.js';
import { ValidationError } from '../errors.js';

export interface BackoffOptions {
  /** Wait after the first failure (default 1 s). */
  initial?: DurationInput;
  /** Each further failure multiplies the wait by this (default 2). */
  factor?: number;
  /** The wait never exceeds this (default 1 h). */
  max?: DurationInput;
  /** Spread, as a fraction: 0.1 waits between 90 % and 110 % of the computed time (default 0.1). */
  jitter?: number;
}

export interface Backoff {
  initialMs: number;
  factor: number;
  maxMs: number;
  jitter: number;
}

export function checkBackoff(options: BackoffOptions = {}, task: string): Backoff {
  const initialMs = toMilliseconds(options.initial ?? 1_000, `task "${task}" retry.backoff.initial`);
  const maxMs = toMilliseconds(options.max ?? 3_600_000, `task "${task}" retry.backoff.max`);
  const factor = options.factor ?? 2;
  const jitter = options.jitter ?? 0.1;
  if (typeof factor !== 'number' || !Number.isFinite(factor) || factor < 1) {
    throw new ValidationError(
      `task "${task}" retry.backoff.factor ${JSON.stringify(factor)} is invalid: expected a number >= 1`,
    );
  }
  if (typeof jitter !== 'number' || !(jitter >= 0 && jitter <= 1)) {
    throw new ValidationError(
      `task "${task}" retry.backoff.jitter ${JSON.stringify(jitter)} is invalid: expected a fraction from 0 to 1`,
    );
  }
  return { initialMs, factor, maxMs: Math.max(maxMs, initialMs), jitter };
}

/**
 * The wait after failed attempt number `attempt` (1-based): initial * factor^(attempt-1),
 * capped at max, then spread by ±jitter so a burst of failures does not retry in lockstep.
 */
export function backoffDelay(backoff: Backoff, attempt: number, random: () => number = Math.random): number {
  const base = Math.min(backoff.maxMs, backoff.initialMs * backoff.factor ** Math.max(0, attempt - 1));
  const spread = backoff.jitter === 0 ? 1 : 1 + backoff.jitter * (2 * random() - 1);
  return Math.round(Math.min(backoff.maxMs, base * spread));
}
