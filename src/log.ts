/** Logging: pino with secrets redacted, and a silent logger for library users who pass none. */
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

/** Paths pino replaces with "[redacted]" wherever a caller logs them. */
export const REDACT_PATHS = [
  'password',
  '*.password',
  'databaseUrl',
  '*.databaseUrl',
  'connectionString',
  '*.connectionString',
  'token',
  '*.token',
  'headers.authorization',
  '*.headers.authorization',
];

export interface LoggerOptions {
  level?: string;
  /** Human-readable lines; defaults to whether stderr is a terminal. */
  pretty?: boolean;
  /** Where the lines go (default: standard error, so command output on stdout stays clean). */
  destination?: NodeJS.WritableStream;
}

const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? process.env.LOG_LEVEL ?? 'info';
  if (!LEVELS.has(level)) {
    throw new Error(`LOG_LEVEL "${level}" is invalid: use one of ${[...LEVELS].join(', ')}`);
  }
  const destination = options.destination ?? process.stderr;
  const usePretty = options.pretty ?? Boolean((destination as { isTTY?: boolean }).isTTY);
  const base = { level, redact: { paths: REDACT_PATHS, censor: '[redacted]' }, base: { pid: process.pid } };
  if (usePretty) {
    // Synchronous pretty stream: no worker thread, and lines are not lost on exit.
    return pino(
      base,
      pretty({ destination, sync: true, ignore: 'pid,hostname', translateTime: 'SYS:HH:MM:ss.l' }),
    );
  }
  if (destination === process.stdout || destination === process.stderr) {
    return pino(base, pino.destination({ dest: destination === process.stdout ? 1 : 2, sync: true }));
  }
  return pino(base, destination);
}

/** A logger that discards everything, for library users who pass none. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
