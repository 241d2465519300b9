/** The app `outbatch worker --app ... --dashboard` runs in the dashboard CLI test: one task that succeeds. */
import { createApp } from '../../src/app.js';
import { createLogger } from '../../src/log.js';

export const app = createApp({
  schema: process.env.OUTBATCH_SCHEMA,
  logger: createLogger({ level: process.env.LOG_LEVEL || 'warn' }),
});

app.task('hello', { queue: 'cli' }, async () => {});
