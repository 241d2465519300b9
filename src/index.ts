// The package entry point: everything a service imports from 'outbatch'.
export {
  type AdminServer,
  type AdminServerOptions,
  startAdminServer,
} from './admin/server.js';
export {
  type App,
  type AppEvents,
  type AppOptions,
  createApp,
  type TypedApp,
  type UntypedApp,
} from './app.js';
export { type Clock, systemClock } from './clock.js';
export { type ListenEvent, type ListenOptions, listen } from './db/listen.js';
export type { Queryable } from './db/queryable.js';
export { isRetryable } from './db/retryable.js';
export { withTransaction } from './db/transaction.js';
export type { DurationInput, DurationLike } from './duration.js';
export {
  AlreadyEnqueued,
  ArchivedEventsError,
  ConcurrencyError,
  ConnectionError,
  ConversionError,
  EmbeddedServerError,
  type ExpectedVersion,
  IdempotencyConflictError,
  JobCancelledError,
  JobOutcomeError,
  JobTimeoutError,
  MigrationError,
  OutbatchError,
  PartitionRaceError,
  TxIdHorizonError,
  UnsupportedServerError,
  ValidationError,
  WaitTimeoutError,
} from './errors.js';
export type { AppendedEvent, AppendOptions } from './events/append.js';
export type { ArchiveOptions, ArchiveResult, PartitionPlan } from './events/archive.js';
export {
  type Checkpoint,
  type CheckpointParts,
  formatCheckpoint,
  parseCheckpoint,
  START_CHECKPOINT,
} from './events/checkpoint.js';
export type { Events, EventsOptions } from './events/events.js';
export type { EventFilter } from './events/filter.js';
export { eventsChannel, type FollowOptions } from './events/follow.js';
export type { Head } from './events/head.js';
export type { ImportOptions, ImportResult } from './events/importArchive.js';
export type { EventLogStatus, EventPartition } from './events/logStatus.js';
export type { ConvertOptions, ConvertStep, EventsLayout } from './events/partitioning.js';
export type { ReadOptions, ReadPage } from './events/read.js';
export type { RetentionKey, RetentionPolicy } from './events/retention.js';
export type { StoredEvent } from './events/storedEvent.js';
export type { StreamOptions } from './events/stream.js';
export { checkTxIdHorizon, type TxIdHorizon } from './events/txIdHorizon.js';
export { UpcastError, type Upcaster } from './events/upcast.js';
export type { NewEvent } from './events/validate.js';
// Jobs
export type { WaitOptions } from './jobs/await.js';
export type { BackoffOptions } from './jobs/backoff.js';
export type { ActionResult, JobControl } from './jobs/control.js';
export type { DeferResult, OnConflict } from './jobs/defer.js';
export type { JobDetail, JobState, JobSummary, TaskStats } from './jobs/inspect.js';
export type { QueueLimits, StoredRate } from './jobs/limits.js';
export type { JobQueue } from './jobs/queue.js';
export type { QueueControl, QueueLimitsOptions, RateLimit } from './jobs/queueControl.js';
export { RateLimited, type RetryAfter } from './jobs/rateLimited.js';
export type {
  BatchContext,
  BatchHandler,
  BatchJob,
  BatchOptions,
  BatchOutcome,
  BatchTaskOptions,
  DeferAndWaitOptions,
  DeferOptions,
  Handler,
  JobContext,
  JobInfo,
  RetryOptions,
  Task,
  TaskOptions,
} from './jobs/task.js';
export type { TimeInput } from './jobs/validate.js';
export { createLogger, type Logger } from './log.js';
export type { ProcessorControl } from './processors/control.js';
// Processors
export type { Pipeline, ProcessorContext, ProcessorOptions, Trigger } from './processors/definition.js';
export {
  aggregateBy,
  bulkWrite,
  columns,
  eachInOrder,
  type Group,
  groupByStream,
  groupItemsBy,
} from './processors/operators.js';
export type { ProcessorState, ProcessorStatus } from './processors/status.js';
// Schedules
export type { Schedule, ScheduleSpec } from './schedule/definition.js';
// Tracing (docs/tracing.md)
export { describeOrigin, ORIGIN_KEY, type Origin } from './trace/origin.js';
export type { TraceOptions, TracingMode } from './trace/tracing.js';
// Typing and validation (docs/typing.md)
export type {
  AppTypes,
  EventData,
  EventName,
  EventSchemas,
  EventVersion,
  InferSchemas,
  TaskArgs,
  TaskName,
  TypedNewEvent,
  TypedStoredEvent,
  Versioned,
} from './typing/declare.js';
export type { StandardSchemaV1 } from './typing/standardSchema.js';
export type {
  DeferArgs,
  ProcessorHandle,
  TypedAppend,
  TypedAppendedEvent,
  TypedPipeline,
  TypedProcessors,
  TypedTasks,
  UntypedAppend,
  UntypedProcessors,
} from './typing/surface.js';
export type { JobFinished, WorkerOptions } from './worker/options.js';
export type { RunOptions } from './worker/runApp.js';
