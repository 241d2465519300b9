/**
 * How soon a run that stopped with newer events held back by an open transaction looks
 * again: arithmetic only, the I/O is the caller's. The count of held runs in a row travels
 * in the next run's job arguments, so the backoff holds whichever worker claims the run.
 *
 * Measured (test/processors/heldBack.test.ts): a fixed 250 ms re-run made 15 runs while
 * one transaction stayed open for 4 s, every one of them reading nothing; doubling from
 * 250 ms makes 5. The price is latency once the transaction ends: its events wait for the
 * next re-run, at most the cap (5 s) later, unless an append wakes the processor sooner.
 */

const INITIAL_MS = 250;
/** The longest wait between held runs: how late a hold's events may be picked up once it ends. */
export const HELD_BACK_MAX_MS = 5_000;

/** Held runs in a row (about 1.75 s held) before the hold is worth a log line; logged once. */
export const HELD_RUNS_BEFORE_LOG = 4;

/**
 * `heldRuns`: held runs in a row before this one (from the job's arguments), `processed`:
 * events this run committed. A run that made progress starts the count again.
 */
export function heldBackStreak(heldRuns: number, processed: number): number {
  return processed > 0 ? 1 : heldRuns + 1;
}

/** The delay before the next run after `streak` held runs in a row (1 or more). */
export function heldBackDelayMs(streak: number): number {
  return Math.min(HELD_BACK_MAX_MS, INITIAL_MS * 2 ** Math.min(streak - 1, 30));
}

/** The held-run count a job's arguments carry; anything else (an older or hand-made job) is 0. */
export function heldRunsOf(args: { heldRuns?: unknown }): number {
  const value = args.heldRuns;
  return typeof value === 'number' && Number.isInteger(value) && value > 0 ? value : 0;
}
