// @smoke
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { createApp } from '../../src/app.js';
import { loadMigrations } from '../../src/db/migrate.js';
import { MigrationError, ValidationError } from '../../src/errors.js';
import { databaseUrl, runCli, uniqueSchema } from '../helpers.js';

const pool = new pg.Pool({ connectionString: databaseUrl(), max: 3 });
const schemas: string[] = [];
function schemaFor(label: string): string {
  const schema = uniqueSchema(label);
  schemas.push(schema);
  return schema;
}

after(async () => {
  for (const schema of schemas) await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await pool.end();
});

describe('migrations', () => {
  let migrationCount = 0;
  before(async () => {
    migrationCount = (await loadMigrations()).length;
  });

  it('applies every file once; a second run applies nothing', async () => {
    const app = createApp({ databaseUrl: databaseUrl(), schema: schemaFor('mig_twice') });
    try {
      const first = await app.migrate();
      assert.equal(first.applied.length, migrationCount);
      const second = await app.migrate();
      assert.equal(second.applied.length, 0);
    } finally {
      await app.close();
    }
  });

  it('five processes migrating at once each exit 0 and every migration is applied exactly once', async () => {
    const schema = schemaFor('mig_five');
    const results = await Promise.all(
      Array.from({ length: 5 }, () =>
        runCli(['migrate', '--schema', schema], { DATABASE_URL: databaseUrl() }),
      ),
    );
    for (const result of results) assert.equal(result.code, 0, result.stderr);
    const { rows } = await pool.query(
      `SELECT version, count(*)::int AS n FROM "${schema}".migrations GROUP BY version ORDER BY version`,
    );
    assert.equal(rows.length, migrationCount);
    assert.ok(rows.every((row) => row.n === 1));
    const saidApplied = results.filter((r) => /applied \d+ migration/.test(r.stdout)).length;
    assert.equal(saidApplied, 1, 'exactly one process applies; the others find nothing to do');
  });

  it('refuses a database whose applied migration was edited, saying what to do', async () => {
    const schema = schemaFor('mig_edited');
    const app = createApp({ databaseUrl: databaseUrl(), schema });
    try {
      await app.migrate();
      await pool.query(`UPDATE "${schema}".migrations SET checksum = 'edited' WHERE version = 1`);
      await assert.rejects(app.migrate(), (error: unknown) => {
        assert.ok(error instanceof MigrationError);
        assert.match(error.message, /was changed after it was applied/);
        assert.match(error.message, /new numbered migration/);
        return true;
      });
    } finally {
      await app.close();
    }
  });

  it('refuses a database newer than the code', async () => {
    const schema = schemaFor('mig_newer');
    const app = createApp({ databaseUrl: databaseUrl(), schema });
    try {
      await app.migrate();
      await pool.query(
        `INSERT INTO "${schema}".migrations (version, name, checksum) VALUES (9999, 'future', 'x')`,
      );
      await assert.rejects(app.migrate(), /database is newer than this outbatch; upgrade outbatch/);
      const cli = await runCli(['migrate', '--schema', schema], { DATABASE_URL: databaseUrl() });
      assert.equal(cli.code, 1);
      assert.equal(cli.stderr.trim().split('\n').length, 1, cli.stderr);
      assert.match(cli.stderr, /^outbatch: schema ".*" has migration 9999/);
    } finally {
      await app.close();
    }
  });

  it('keeps two schemas in one database apart', async () => {
    const a = createApp({ databaseUrl: databaseUrl(), schema: schemaFor('mig_a') });
    const b = createApp({ databaseUrl: databaseUrl(), schema: schemaFor('mig_b') });
    try {
      await a.migrate();
      await b.migrate();
      await pool.query(
        `INSERT INTO "${a.schema}".audit_log (actor, host, action, subject) VALUES ('t', 'h', 'test', 'only-in-a')`,
      );
      const inA = await pool.query(`SELECT count(*)::int AS n FROM "${a.schema}".audit_log`);
      const inB = await pool.query(`SELECT count(*)::int AS n FROM "${b.schema}".audit_log`);
      assert.equal(inA.rows[0].n, 1);
      assert.equal(inB.rows[0].n, 0);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('rejects hostile and malformed schema names before touching the database', () => {
    for (const name of [
      'a"; DROP SCHEMA public; --',
      'Outbatch',
      '',
      '1abc',
      'pg_catalog',
      'a b',
      'x'.repeat(41),
    ]) {
      assert.throws(() => createApp({ databaseUrl: databaseUrl(), schema: name }), ValidationError, name);
    }
  });
});
