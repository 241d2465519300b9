// @smoke
/**
 * The oldest supported server. PostgreSQL 12 cannot be started here (the registry's
 * embedded binaries begin at 13 for our purposes), so the refusal is proved on faked
 * version strings and on a fake connection that reports 12; the passing path runs on the
 * real server at DATABASE_URL (CI: 13, 15, 17 and 18).
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import pg from 'pg';
import { migrate } from '../../src/db/migrate.js';
import {
  assertSupportedServer,
  MIN_SERVER_MAJOR,
  readServerVersion,
  serverVersionProblem,
} from '../../src/db/serverVersion.js';
import { UnsupportedServerError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { databaseUrl, runCli, uniqueSchema } from '../helpers.js';

const pool = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
after(() => pool.end());

describe('the server version check', () => {
  it('refuses 12 and older in one line naming the version found and the minimum', () => {
    assert.equal(
      serverVersionProblem({ version: '12.22', num: 120022 }),
      'PostgreSQL 12.22 is too old: outbatch needs PostgreSQL 13 or newer (for xid8 and pg_current_xact_id()); upgrade the server or point DATABASE_URL at a newer one',
    );
    const old = serverVersionProblem({ version: '9.6.24', num: 90624 });
    assert.match(old!, /^PostgreSQL 9\.6\.24 is too old: outbatch needs PostgreSQL 13 or newer/);
    assert.doesNotMatch(old!, /\n/);
  });

  it('accepts 13.0 and everything after', () => {
    assert.equal(MIN_SERVER_MAJOR, 13);
    for (const [version, num] of [
      ['13.0', 130000],
      ['13.23', 130023],
      ['18.4 (Debian 18.4-1.pgdg120+1)', 180004],
      ['19devel', 190000],
    ] as const) {
      assert.equal(serverVersionProblem({ version, num }), undefined, version);
    }
  });

  it('migrate refuses a server that reports 12 before it writes anything', async () => {
    const sent: string[] = [];
    const client = {
      async query(text: string) {
        sent.push(text);
        return { rows: [{ version: '12.22', num: '120022' }] };
      },
      release() {},
    };
    const fakePool = { connect: async () => client } as unknown as pg.Pool;
    const refused = await migrate(fakePool, uniqueSchema('old'), createLogger({ level: 'silent' })).then(
      () => undefined,
      (error: unknown) => error,
    );
    assert.ok(refused instanceof UnsupportedServerError, String(refused));
    assert.equal(refused.code, 'OUTBATCH_SERVER_VERSION');
    assert.equal(refused.found, '12.22');
    assert.match(refused.message, /^PostgreSQL 12\.22 is too old: outbatch needs PostgreSQL 13 or newer/);
    assert.equal(sent.length, 1, `only the version was read: ${sent.join('; ')}`);
  });

  it('passes on the real server, and doctor names its version', async () => {
    const found = await readServerVersion(pool);
    assert.ok(found.num >= 130000, found.version);
    assert.deepEqual(await assertSupportedServer(pool), found);
    const schema = uniqueSchema('version');
    try {
      const migrated = await runCli(['migrate', '--schema', schema], { DATABASE_URL: databaseUrl() });
      assert.equal(migrated.code, 0, migrated.stderr);
      const doctor = await runCli(['doctor', '--schema', schema], { DATABASE_URL: databaseUrl() });
      assert.equal(doctor.code, 0, doctor.stdout + doctor.stderr);
      assert.match(
        doctor.stdout,
        new RegExp(`^ok {4}server version {2}PostgreSQL ${found.version.split(' ')[0]}`, 'm'),
      );
    } finally {
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    }
  });
});
