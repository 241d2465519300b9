// The package entry point: everything a service imports from 'outbatch'.
export { type App, type AppOptions, createApp } from './app.js';
export { type Clock, systemClock } from './clock.js';
export type { Queryable } from './db/queryable.js';
export { isRetryable } from './db/retryable.js';
export { withTransaction } from './db/transaction.js';
export {
  AlreadyEnqueued,
  ConnectionError,
  EmbeddedServerError,
  JobTimeoutError,
  MigrationError,
  OutbatchError,
  ValidationError,
} from './errors.js';
// Jobs
export type { BackoffOptions } from './jobs/backoff.js';
export type { ActionResult, JobControl } from './jobs/control.js';
export type { DeferResult } from './jobs/defer.js';
export type { JobDetail, JobState, JobSummary, TaskStats } from './jobs/inspect.js';
export type { DurationInput, TimeInput } from './jobs/options.js';
export type { JobQueue, RunOptions } from './jobs/queue.js';
export type {
  DeferOptions,
  Handler,
  JobContext,
  JobInfo,
  RetryOptions,
  Task,
  TaskOptions,
} from './jobs/task.js';
export { createLogger, type Logger } from './log.js';
export type { WorkerOptions } from './worker/options.js';
