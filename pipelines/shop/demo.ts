/**
 * The demo's run: the shop simulated against a real worker — orders appended at a steady
 * rate and in bursts, the three processors and the digest task running — with a live
 * view of events, jobs and each processor's lag, and the dashboard on a local port beside
 * it. start.ts is the program (`npm start`) around it. Stopping (the signal) ends it
 * cleanly; the next run continues from the checkpoints.
 */
import fs from 'node:fs';
import path from 'node:path';
import { type AdminServer, createLogger, startAdminServer } from '../../src/index.js';
import { createShopApp, prepareShop } from './app.js';
import { simulateShop } from './simulator.js';

export interface DemoOptions {
  databaseUrl?: string;
  schema?: string;
  dataDir?: string;
  shopSchema: string;
  /** Stop after this many seconds (default: until Ctrl-C). */
  durationSeconds?: number;
  signal: AbortSignal;
  out: NodeJS.WriteStream;
  /** Simulated orders per second (default 20). */
  rate?: number;
  /** Port of the dashboard on 127.0.0.1 (default: a free one). */
  dashboardPort?: number;
  /** Enables the dashboard's actions (retry, cancel, pause…); without it the page is read-only. */
  dashboardToken?: string;
}

export interface DemoSummary {
  appended: number;
  eventsTotal: string;
  jobsSucceeded: number;
  jobsFailed: number;
  processors: { name: string; version: number; state: string; lagEvents: number; processed: string }[];
}

export async function runDemo(options: DemoOptions): Promise<DemoSummary> {
  const logFile = path.join('.outbatch', 'demo.log');
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  const logger = createLogger({ destination: fs.createWriteStream(logFile, { flags: 'a' }), pretty: false });
  const app = createShopApp({
    databaseUrl: options.databaseUrl,
    schema: options.schema,
    dataDir: options.dataDir,
    shopSchema: options.shopSchema,
    logger,
  });
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  options.signal.addEventListener('abort', onAbort, { once: true });
  let timer: NodeJS.Timeout | undefined;
  let dashboard: AdminServer | undefined;
  const tty = Boolean(options.out.isTTY);
  try {
    await prepareShop(app, options.shopSchema);
    const db = await app.database();
    const where = db.embedded ? `embedded PostgreSQL on 127.0.0.1:${db.embedded.port}` : 'your PostgreSQL';
    // Loopback only: the demo is for the person at this machine, not for the network.
    const server = await startAdminServer({
      app,
      host: '127.0.0.1',
      port: options.dashboardPort ?? 0,
      token: options.dashboardToken,
    });
    dashboard = server;
    // Printed at once (the live view first renders a second or more later), so the page can
    // be opened while the shop warms up; a terminal's view repeats it, as it clears the screen.
    options.out.write(`dashboard on ${server.url}\n`);
    let appended = 0;
    const startedAt = Date.now();
    const worker = new AbortController();
    options.signal.addEventListener('abort', () => worker.abort(), { once: true });
    const running = app.run({ concurrency: 8, signal: worker.signal });
    // --duration counts simulated traffic, not start-up (migrations on a busy server can be slow).
    if (options.durationSeconds !== undefined) timer = setTimeout(onAbort, options.durationSeconds * 1000);
    const simulator = simulateShop(app, {
      signal: stop.signal,
      rate: options.rate,
      onAppended: (n) => {
        appended += n;
      },
    });
    const snapshot = async (): Promise<DemoSummary> => {
      const [head, stats, processors] = await Promise.all([
        app.events.head(),
        app.jobs.stats(),
        app.processors.status(),
      ]);
      const user = stats.filter((s) => !s.task.startsWith('processor:'));
      return {
        appended,
        eventsTotal: head.position.toString(),
        jobsSucceeded: user.reduce((sum, s) => sum + s.succeeded, 0),
        jobsFailed: user.reduce((sum, s) => sum + s.failed, 0),
        processors: processors.map((p) => ({
          name: p.name,
          version: p.version,
          state: p.state,
          lagEvents: p.lagEvents,
          processed: p.eventsProcessed,
        })),
      };
    };
    const render = (s: DemoSummary) => {
      const seconds = Math.max(1, (Date.now() - startedAt) / 1000);
      const lines = [
        `outbatch demo — ${where}, schema "${app.schema}", logs in ${logFile}${tty ? ' — Ctrl-C to stop' : ''}`,
        ...(tty ? [`dashboard on ${server.url}`] : []),
        `events: ${s.eventsTotal} in the log, ${s.appended} appended this run (${Math.round(s.appended / seconds)}/s)`,
        `digest jobs: ${s.jobsSucceeded} done, ${s.jobsFailed} failed`,
        'processors:',
        ...s.processors.map(
          (p) =>
            `  ${p.name.padEnd(26)} v${p.version}  ${p.state.padEnd(8)} lag ${String(p.lagEvents).padStart(6)}  processed ${p.processed}`,
        ),
      ];
      options.out.write(tty ? `\x1b[H\x1b[2J${lines.join('\n')}\n` : `${lines.join(' | ')}\n`);
    };
    while (!stop.signal.aborted) {
      await new Promise((resolve) => setTimeout(resolve, tty ? 1000 : 5000));
      if (!stop.signal.aborted) render(await snapshot());
    }
    await simulator;
    if (!options.signal.aborted) {
      // A timed run (--duration) lets the processors finish what was appended, so its summary
      // is complete; Ctrl-C stops at once (the next start continues from the checkpoints).
      for (let waited = 0; waited < 60_000 && !options.signal.aborted; waited += 250) {
        const processors = await app.processors.status().catch(() => []);
        if (processors.length > 0 && processors.every((p) => p.lagEvents === 0)) break;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
    worker.abort();
    await running;
    const summary = await snapshot();
    render(summary);
    return summary;
  } finally {
    clearTimeout(timer);
    options.signal.removeEventListener('abort', onAbort);
    await dashboard?.close();
    await app.close();
  }
}
