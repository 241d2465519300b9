import type { Command } from 'commander';
import { runCommand } from '../context.js';
import { doctorReport, formatReport } from './doctor.js';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('the main job: start (or connect to) PostgreSQL, migrate, and report')
    .action((_options, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const { applied } = await app.migrate();
        const report = await doctorReport(app);
        print(`migrations applied this run: ${applied.length}\n${formatReport(report)}`, {
          applied: applied.length,
          report,
        });
        return report.ok ? 0 : 1;
      }),
    );
}
