/** `outbatch dashboard`: serves the web dashboard, its JSON API and /metrics. */
import type { Command } from 'commander';
import { ALLOWED_HOSTS_ENV, allowedHostsFromEnv, parseAllowedHosts } from '../../admin/hostCheck.js';
import { startAdminServer } from '../../admin/server.js';
import { runCommand } from '../context.js';
import { parsePort } from '../parse.js';

export interface DashboardFlags {
  port: string;
  host: string;
  allowedHost: string[];
}

/** The token is read from the environment only: a command-line flag would show in `ps`. */
export function dashboardToken(): string | undefined {
  return process.env.OUTBATCH_DASHBOARD_TOKEN || undefined;
}

export function registerDashboard(program: Command): void {
  program
    .command('dashboard')
    .description('serve the web dashboard, its JSON API and /metrics (actions need OUTBATCH_DASHBOARD_TOKEN)')
    .option('--port <n>', 'port to listen on', '8080')
    .option(
      '--host <address>',
      'address to bind (0.0.0.0 exposes it: put authentication in front)',
      '127.0.0.1',
    )
    .option(
      '--allowed-host <name>',
      `a Host name (or name:port) to answer besides the bound address, e.g. the proxy's; repeatable, added to ${ALLOWED_HOSTS_ENV}`,
      (value: string, previous: string[]) => [...previous, value],
      [] as string[],
    )
    .action((flags: DashboardFlags, command: Command) =>
      runCommand(command, async ({ app, signal, print }) => {
        const port = parsePort(flags.port);
        const allowedHosts = [...parseAllowedHosts(flags.allowedHost), ...allowedHostsFromEnv()];
        const server = await startAdminServer({
          app,
          host: flags.host,
          port,
          token: dashboardToken(),
          allowedHosts,
        });
        print(`dashboard on ${server.url} (Ctrl-C stops)`, { url: server.url });
        await new Promise<void>((resolve) => {
          if (signal.aborted) resolve();
          else signal.addEventListener('abort', () => resolve(), { once: true });
        });
        await server.close();
      }),
    );
}
