/** `outbatch db`: the embedded PostgreSQL server for local development. */
import type { Command } from 'commander';
import { runCommand } from '../context.js';

export function registerDb(program: Command): void {
  const db = program.command('db').description('the embedded PostgreSQL server for local development');
  db.command('start')
    .description('start the embedded server in the foreground, print its URL, stop it on Ctrl-C')
    .action((_options, command: Command) =>
      runCommand(command, async ({ print, signal, log }) => {
        if (process.env.DATABASE_URL || command.optsWithGlobals().databaseUrl) {
          log.warn('a database URL is set; "db start" ignores it and starts the embedded server');
        }
        const { startEmbedded } = await import('../../db/embedded.js');
        const server = await startEmbedded({ dataDir: command.optsWithGlobals().dataDir, log });
        print(
          `embedded PostgreSQL is running (data in ${server.dataDir})\nDATABASE_URL=${server.url}\npress Ctrl-C to stop`,
          { url: server.url, port: server.port, dataDir: server.dataDir, owned: server.owned },
        );
        // An adopted or borrowed server is not our child, so nothing else keeps the process alive.
        const keepAlive = setInterval(() => {}, 60_000);
        await new Promise<void>((resolve) =>
          signal.addEventListener('abort', () => resolve(), { once: true }),
        );
        clearInterval(keepAlive);
        await server.stop();
      }),
    );
}
