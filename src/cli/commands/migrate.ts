/** `outbatch migrate`: apply pending schema migrations. */
import type { Command } from 'commander';
import { runCommand } from '../context.js';

export function registerMigrate(program: Command): void {
  program
    .command('migrate')
    .description('apply pending schema migrations (safe to run from several processes at once)')
    .action((_options, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const { applied } = await app.migrate();
        const names = applied.map((m) => `${m.version}_${m.name}`);
        print(
          applied.length === 0
            ? `schema "${app.schema}" is up to date; nothing to apply`
            : `applied ${applied.length} migration(s) to schema "${app.schema}": ${names.join(', ')}`,
          { schema: app.schema, applied: names },
        );
      }),
    );
}
