// The package entry point: everything a service imports from 'outbatch'.
export { type App, type AppOptions, createApp } from './app.js';
export { type Clock, systemClock } from './clock.js';
export type { Queryable } from './db/queryable.js';
export { isRetryable } from './db/retryable.js';
export { withTransaction } from './db/transaction.js';
export {
  ConnectionError,
  EmbeddedServerError,
  MigrationError,
  OutbatchError,
  ValidationError,
} from './errors.js';
export { createLogger, type Logger } from './log.js';
