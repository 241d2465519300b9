/** Which errors are retried: the table of retryable SQLSTATEs and connection failures. */
import pg from 'pg';

/**
 * The one table that decides what is worth retrying. Everything that retries
 * (the worker loop, listeners, processors, appenders with `retry`) asks `isRetryable`.
 */
const RETRYABLE_SQLSTATES: Record<string, string> = {
  '40001': 'serialization_failure',
  '40P01': 'deadlock_detected',
  '55P03': 'lock_not_available',
  '57P01': 'admin_shutdown',
  '57P02': 'crash_shutdown',
  '57P03': 'cannot_connect_now',
  '08000': 'connection_exception',
  '08003': 'connection_does_not_exist',
  '08006': 'connection_failure',
  '08001': 'sqlclient_unable_to_establish_sqlconnection',
  '08004': 'sqlserver_rejected_establishment_of_sqlconnection',
  '53300': 'too_many_connections',
};

/** Another transaction holds a lock the statement waited for longer than lock_timeout. */
export const LOCK_NOT_AVAILABLE = '55P03';

// Node's socket errors for a server that is restarting or unreachable for a moment.
const RETRYABLE_NODE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN']);

// node-postgres reports a dropped connection with these messages and no code.
// "Query read timeout" is the client's own deadline (`query_timeout`): no reply came in
// time, so as with a lost connection the statement may or may not have run.
const CONNECTION_LOST =
  /Connection terminated|connection is closed|Client has encountered a connection error|timeout exceeded when trying to connect|Query read timeout/i;

export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

export function isRetryable(error: unknown): boolean {
  if (error === null || typeof error !== 'object') return false;
  const retryable = (error as { retryable?: unknown }).retryable;
  if (typeof retryable === 'boolean') return retryable;
  const code = sqlState(error);
  if (code !== undefined && (code in RETRYABLE_SQLSTATES || RETRYABLE_NODE_CODES.has(code))) return true;
  const message = (error as { message?: unknown }).message;
  if (typeof message === 'string' && CONNECTION_LOST.test(message)) return true;
  const cause = (error as { cause?: unknown }).cause;
  return cause !== undefined && cause !== error && isRetryable(cause);
}

/**
 * How a statement that failed should be handled, for callers that must tell "try the same
 * again" from "this will never be accepted". `connection`: no answer, or the server going
 * away — every statement would fail alike, so retry as it is. `transient`: the server
 * answered but may not next time (deadlock, lock or statement timeout, a cancel) — retry a
 * few times. `refused`: the server will say the same again (bad data, a constraint, a
 * trigger's exception, a permission) — isolate it.
 */
export function failureKind(error: unknown): 'connection' | 'transient' | 'refused' {
  if (!(error instanceof pg.DatabaseError)) return isRetryable(error) ? 'connection' : 'transient';
  const code = sqlState(error) ?? '';
  if (code.startsWith('08') || code.startsWith('57P') || code.startsWith('53')) return 'connection';
  if (/^(22|23|42|P0|2B|0A|21|2F|39|XX)/.test(code)) return 'refused';
  return 'transient';
}
