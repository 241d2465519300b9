/** Where time comes from, so schedules, backoff and stall detection are testable without sleeping. */
export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };
