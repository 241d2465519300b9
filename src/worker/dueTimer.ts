/**
 * Wake-ups for jobs this process knows fall due soon (a retry's backoff, a job it deferred
 * with a delay): no NOTIFY announces a job becoming due, and the poll tick may be far.
 * Only sooner than the poll tick. One timer, for the earliest due time; due times are kept
 * in 10 ms buckets, so ten thousand delayed defers are a few buckets. Each due time wakes
 * twice, 5 ms and 100 ms after: a claim must not come too early for a job whose run_at the
 * database's clock (a little behind ours, or a write still in flight) has not reached yet.
 */
export interface DueTimer {
  /** Call `onDue` about `ms` from now (ignored at or beyond the poll interval). */
  wakeIn(ms: number): void;
  /** Forget every pending wake-up (shutdown, or a worker that failed to start). */
  clear(): void;
}

const BUCKET_MS = 10;
const AFTER_DUE_MS = [5, 100];

export function makeDueTimer(pollIntervalMs: number, onDue: () => void): DueTimer {
  const due = new Set<number>(); // performance.now() in buckets
  let timer: NodeJS.Timeout | undefined;
  let timerBucket = Number.POSITIVE_INFINITY;
  let cleared = false;

  function arm(): void {
    let next = Number.POSITIVE_INFINITY;
    for (const bucket of due) if (bucket < next) next = bucket;
    if (next === Number.POSITIVE_INFINITY || next >= timerBucket) return;
    clearTimeout(timer);
    timerBucket = next;
    timer = setTimeout(fire, Math.max(0, next * BUCKET_MS - performance.now()));
  }

  function fire(): void {
    timer = undefined;
    timerBucket = Number.POSITIVE_INFINITY;
    const now = performance.now();
    for (const bucket of due) if (bucket * BUCKET_MS <= now + 1) due.delete(bucket);
    onDue();
    arm();
  }

  return {
    wakeIn(ms) {
      if (cleared || ms >= pollIntervalMs) return;
      const at = performance.now() + Math.max(0, ms);
      for (const after of AFTER_DUE_MS) due.add(Math.ceil((at + after) / BUCKET_MS));
      arm();
    },
    clear() {
      cleared = true;
      clearTimeout(timer);
      timer = undefined;
      timerBucket = Number.POSITIVE_INFINITY;
      due.clear();
    },
  };
}
