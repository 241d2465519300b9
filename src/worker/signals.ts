/**
 * SIGINT/SIGTERM for a long-running process: the first asks it to stop gracefully, a second
 * exits at once (130). Shared by `app.run()` without a signal of its own and the CLI.
 */
import type { Logger } from 'pino';

/** Calls `stop` on the first signal; returns a function that stops listening. */
export function onStopSignals(log: Logger, stop: () => void, secondSignal = 'exiting now'): () => void {
  let received = 0;
  const onSignal = (name: NodeJS.Signals) => {
    received += 1;
    if (received > 1) {
      log.warn({ signal: name }, `second signal: ${secondSignal}`);
      process.exit(130);
    }
    log.info({ signal: name }, 'stopping gracefully (send the signal again to exit at once)');
    stop();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}
