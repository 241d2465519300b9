// @smoke
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { databaseUrl, runCli } from '../helpers.js';

function oneLine(text: string): string {
  const lines = text.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line, got: ${text}`);
  return lines[0]!;
}

describe('cli', () => {
  it('prints help and version with exit 0', async () => {
    const help = await runCli(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /migrate/);
    assert.match(help.stdout, /doctor/);
    const version = await runCli(['--version']);
    assert.equal(version.code, 0);
    assert.match(version.stdout.trim(), /^\d+\.\d+\.\d+/);
  });

  it('rejects an unknown command or flag with one line and exit 2', async () => {
    const command = await runCli(['frobnicate']);
    assert.equal(command.code, 2);
    assert.match(oneLine(command.stderr), /^outbatch: unknown command 'frobnicate'/);
    const flag = await runCli(['migrate', '--bogus']);
    assert.equal(flag.code, 2);
    assert.match(oneLine(flag.stderr), /^outbatch: unknown option '--bogus'/);
  });

  it('rejects a hostile schema name with one line and exit 2', async () => {
    const result = await runCli(['migrate', '--schema', 'x"; drop table y; --'], {
      DATABASE_URL: databaseUrl(),
    });
    assert.equal(result.code, 2);
    assert.match(oneLine(result.stderr), /schema name .* is invalid: use 1-40 lower-case letters/);
  });

  it('rejects a database URL that is not a postgres URL', async () => {
    const result = await runCli(['doctor', '--database-url', 'mysql://x@y/z']);
    assert.equal(result.code, 2);
    assert.match(oneLine(result.stderr), /expected postgres:\/\/user:password@host:port\/database/);
  });

  it('names host:port and the reason when the server is unreachable', async () => {
    const refused = await runCli(['doctor'], { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/test' });
    assert.equal(refused.code, 1);
    assert.match(
      oneLine(refused.stderr),
      /cannot connect to PostgreSQL at 127\.0\.0\.1:1: connection refused/,
    );
  });

  it('names the reason for a wrong password or database, without printing the password', async () => {
    const url = new URL(databaseUrl());
    url.pathname = '/no_such_database_here';
    url.password = 'sup3r-secret';
    const result = await runCli(['doctor'], { DATABASE_URL: url.toString() });
    assert.equal(result.code, 1);
    const line = oneLine(result.stderr);
    assert.match(line, new RegExp(`cannot connect to PostgreSQL at ${url.hostname}:${url.port || 5432}: `));
    assert.match(line, /database does not exist|password authentication failed/);
    assert.doesNotMatch(result.stderr + result.stdout, /sup3r-secret/);
  });

  it('doctor reports every check and migrate prints JSON on request', async () => {
    const schema = `t_cli_${process.pid}`;
    try {
      const migrate = await runCli(['migrate', '--schema', schema, '--json'], {
        DATABASE_URL: databaseUrl(),
      });
      assert.equal(migrate.code, 0, migrate.stderr);
      assert.equal(JSON.parse(migrate.stdout).schema, schema);
      const doctor = await runCli(['doctor', '--schema', schema, '--json'], { DATABASE_URL: databaseUrl() });
      assert.equal(doctor.code, 0, doctor.stdout + doctor.stderr);
      const report = JSON.parse(doctor.stdout);
      assert.deepEqual(
        report.checks.map((c: { name: string }) => c.name),
        [
          'connection',
          'server version',
          'xid8 support',
          'migrations',
          'tx id horizon',
          'event log',
          'clock skew',
        ],
      );
      assert.equal(report.ok, true);
    } finally {
      const pg = await import('pg');
      const pool = new pg.default.Pool({ connectionString: databaseUrl() });
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await pool.end();
    }
  });
});
