/** `outbatch doctor`: runs the doctor's checks and prints the report. */
import type { Command } from 'commander';
import { runDoctor } from '../../admin/doctor.js';
import type { App } from '../../app.js';
import { describeTarget } from '../../db/connection.js';
import { runCommand } from '../context.js';

export function registerDoctor(program: Command): void {
  program
    .command('doctor')
    .description('check the connection, server version, migrations, xid8 support and clock skew')
    .action((_options, command: Command) =>
      runCommand(command, async ({ app, print }) => {
        const report = await doctorReport(app);
        print(formatReport(report), report);
        return report.ok ? 0 : 1;
      }),
    );
}

export async function doctorReport(app: App) {
  const db = await app.database();
  const target = db.embedded
    ? `embedded PostgreSQL on 127.0.0.1:${db.embedded.port} (${db.embedded.dataDir})`
    : describeTarget(db.url);
  const { route } = db;
  const through =
    route.pooler === 'none'
      ? ''
      : ` through a transaction pooler (prepared statements ${route.preparedStatements ? 'on' : 'off'}, LISTEN ${route.listenUrl ? `on ${describeTarget(route.listenUrl)}` : 'off: polling'})`;
  return runDoctor(db.pool, app.schema, app.clock, `${target}${through}`);
}

export function formatReport(report: Awaited<ReturnType<typeof doctorReport>>): string {
  const lines = report.checks.map((c) => `${c.ok ? 'ok  ' : 'FAIL'}  ${c.name.padEnd(15)} ${c.detail}`);
  lines.push(report.ok ? 'all checks passed' : 'some checks failed');
  return lines.join('\n');
}
