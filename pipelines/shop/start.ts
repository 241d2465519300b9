/**
 * The demo as a program of its own, written against the public API like any service would
 * be: `npm start` in a checkout, `outbatch demo` once installed (the package ships it
 * compiled, and the CLI command runs this file with the same arguments).
 *
 *   npm start -- --duration 30 --rate 100 --dashboard-port 8080
 *   npx outbatch demo --duration 30
 *
 * One line on stderr for an error: exit 2 for a bad command line, 1 for anything else.
 */
import { parseArgs } from 'node:util';
import { ValidationError } from '../../src/index.js';
import { runDemo } from './demo.js';

const USAGE = `usage: outbatch demo [options]   (in a checkout of outbatch: npm start -- [options])

  --duration <seconds>     stop after this many seconds of traffic (default: until Ctrl-C)
  --rate <orders>          simulated orders per second (default 20)
  --dashboard-port <n>     dashboard port on 127.0.0.1 (default: a free one)
  --shop-schema <name>     schema of the shop's tables (default shop)
  --schema <name>          schema of the outbatch tables (OUTBATCH_SCHEMA, default outbatch)
  --database-url <url>     postgres:// URL (DATABASE_URL; default: embedded PostgreSQL)
  --data-dir <path>        embedded server data folder (OUTBATCH_DATA_DIR, default .outbatch/pg)
  --json                   print the final summary as JSON on stdout (the live view goes to stderr)
  --help                   this text
`;

function integer(text: string | undefined, flag: string, max: number): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || Number(text) > max) {
    throw new ValidationError(
      `${flag} ${JSON.stringify(text)} is invalid: expected a whole number from 0 to ${max}`,
    );
  }
  return Number(text);
}

function commandLine() {
  const { values } = parseArgs({
    options: {
      duration: { type: 'string' },
      rate: { type: 'string' },
      'dashboard-port': { type: 'string' },
      'shop-schema': { type: 'string', default: 'shop' },
      schema: { type: 'string' },
      'database-url': { type: 'string' },
      'data-dir': { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  return {
    help: values.help,
    json: values.json,
    // Unset flags fall through to createApp, which reads DATABASE_URL, OUTBATCH_SCHEMA, OUTBATCH_DATA_DIR.
    databaseUrl: values['database-url'],
    schema: values.schema,
    dataDir: values['data-dir'],
    shopSchema: values['shop-schema'],
    durationSeconds: integer(values.duration, '--duration', 1_000_000),
    rate: integer(values.rate, '--rate', 1_000_000),
    dashboardPort: integer(values['dashboard-port'], '--dashboard-port', 65_535),
  };
}

function fail(error: unknown, code: number): never {
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`outbatch demo: ${message.split('\n')[0]}\n`);
  process.exit(code);
}

let options: ReturnType<typeof commandLine>;
try {
  options = commandLine();
} catch (error) {
  // parseArgs throws TypeErrors with a code for unknown or malformed flags.
  fail(error, 2);
}
const { help, json, ...demo } = options;
if (help) {
  process.stdout.write(USAGE);
  process.exit(0);
}

// The first Ctrl-C stops cleanly (the next start continues from the checkpoints); a second
// one exits at once.
const stop = new AbortController();
let signals = 0;
const onSignal = () => {
  signals += 1;
  if (signals > 1) process.exit(130);
  stop.abort();
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

try {
  const summary = await runDemo({
    ...demo,
    dashboardToken: process.env.OUTBATCH_DASHBOARD_TOKEN || undefined,
    signal: stop.signal,
    out: json ? process.stderr : process.stdout,
  });
  if (json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
} catch (error) {
  fail(error, error instanceof ValidationError ? 2 : 1);
}
process.off('SIGINT', onSignal);
process.off('SIGTERM', onSignal);
