// @smoke
/**
 * schema/current/schema.sql against the migrations. One schema is built the way an
 * existing install gets there (every numbered file in turn), one the way a fresh install
 * does (the snapshot), and their catalogs must be identical. When they are not, the
 * failure lists what differs, with a line diff for definitions (function bodies included).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import {
  loadMigrations,
  loadSnapshot,
  type Migration,
  migrate,
  migrationStatus,
} from '../../src/db/migrate.js';
import { createLogger } from '../../src/log.js';
import { databaseUrl, uniqueSchema } from '../helpers.js';

const pool = new pg.Pool({ connectionString: databaseUrl(), max: 3 });
const log = createLogger({ level: 'silent' });
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

/**
 * Everything a schema defines, keyed by what it is ("column jobs.queue", "function
 * defer_job(task text, …)"), each value a normalised description: the schema's own name
 * is replaced by <schema>, so two schemas built alike describe alike. Read with
 * search_path set to pg_catalog alone, so every reference the deparsers print is
 * qualified the same way in both. Uses catalog columns that every PostgreSQL since 12 has
 * (CI runs it on 13, 15, 17 and 18).
 */
async function describeSchema(schema: string): Promise<Map<string, string>> {
  const client = await pool.connect();
  const described = new Map<string, string>();
  const normalise = (text: string) => text.split(schema).join('<schema>');
  const put = (key: string, value: string) => {
    assert.ok(!described.has(normalise(key)), `two catalog entries are both described as "${key}"`);
    described.set(normalise(key), normalise(value));
  };
  const rows = async (sql: string) => (await client.query(sql, [schema])).rows;
  try {
    await client.query('SET search_path TO pg_catalog');
    const ns = `(SELECT oid FROM pg_namespace WHERE nspname = $1)`;

    for (const r of await rows(
      `SELECT pg_get_userbyid(nspowner) AS owner, nspacl::text AS acl FROM pg_namespace WHERE oid = ${ns}`,
    )) {
      put('schema', `owner ${r.owner}; grants ${r.acl ?? 'default'}`);
    }
    for (const r of await rows(
      `SELECT defaclobjtype AS kind, pg_get_userbyid(defaclrole) AS role, defaclacl::text AS acl
       FROM pg_default_acl WHERE defaclnamespace = ${ns}`,
    )) {
      put(`default privileges ${r.kind} for ${r.role}`, r.acl);
    }

    // Every relation but indexes (whose definition below says it all): tables, views,
    // sequences. Their parts follow.
    for (const r of await rows(
      `SELECT c.relname, c.relkind, c.relpersistence, c.reloptions::text AS options, c.relacl::text AS acl,
              pg_get_userbyid(c.relowner) AS owner, c.relrowsecurity, c.relforcerowsecurity, c.relreplident
       FROM pg_class c WHERE c.relnamespace = ${ns} AND c.relkind NOT IN ('i', 'I')`,
    )) {
      put(
        `relation ${r.relname}`,
        `kind ${r.relkind}; persistence ${r.relpersistence}; options ${r.options ?? 'none'}; owner ${r.owner}; ` +
          `grants ${r.acl ?? 'default'}; row security ${r.relrowsecurity}/${r.relforcerowsecurity}; ` +
          `replica identity ${r.relreplident}`,
      );
    }

    // Columns of tables and views, in order: SELECT * and INSERT without a column list see the order.
    for (const r of await rows(
      `SELECT c.relname, a.attname,
              row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS place,
              format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
              pg_get_expr(d.adbin, d.adrelid) AS default_expr, a.attidentity, a.attgenerated,
              co.collname, a.attacl::text AS acl
       FROM pg_attribute a
       JOIN pg_class c ON c.oid = a.attrelid
       LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
       LEFT JOIN pg_collation co ON co.oid = a.attcollation
       WHERE c.relnamespace = ${ns} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
         AND a.attnum > 0 AND NOT a.attisdropped`,
    )) {
      put(
        `column ${r.relname}.${r.attname}`,
        `#${r.place} ${r.type}${r.attnotnull ? ' NOT NULL' : ''}` +
          `${r.default_expr === null ? '' : ` DEFAULT ${r.default_expr}`}` +
          `${r.attidentity ? ` identity ${r.attidentity}` : ''}${r.attgenerated ? ` generated ${r.attgenerated}` : ''}` +
          `${r.collname ? ` collate ${r.collname}` : ''}${r.acl ? ` grants ${r.acl}` : ''}`,
      );
    }

    for (const r of await rows(
      `SELECT coalesce(c.relname, t.typname) AS owner, con.conname, pg_get_constraintdef(con.oid) AS def
       FROM pg_constraint con
       LEFT JOIN pg_class c ON c.oid = con.conrelid
       LEFT JOIN pg_type t ON t.oid = con.contypid
       WHERE con.connamespace = ${ns}`,
    )) {
      put(`constraint ${r.owner}.${r.conname}`, r.def);
    }

    for (const r of await rows(
      `SELECT ic.relname, pg_get_indexdef(i.indexrelid) AS def, i.indisclustered, i.indisreplident
       FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
       WHERE ic.relnamespace = ${ns}`,
    )) {
      put(
        `index ${r.relname}`,
        `${r.def}${r.indisclustered ? ' (clustered)' : ''}${r.indisreplident ? ' (replica identity)' : ''}`,
      );
    }

    // Functions and procedures whole: signature, defaults, result, language, SET clauses,
    // volatility and the body as text. Aggregates have no CREATE FUNCTION form.
    for (const r of await rows(
      `SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS signature, p.prokind,
              CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_get_functiondef(p.oid) END AS def,
              pg_get_userbyid(p.proowner) AS owner, p.proacl::text AS acl
       FROM pg_proc p WHERE p.pronamespace = ${ns}`,
    )) {
      // PostgreSQL 14 started naming the mode of a procedure's arguments ("IN how_many");
      // 13 does not, so the key leaves it out and reads the same on every supported major.
      const signature = r.prokind === 'p' ? r.signature.replace(/([(,] ?)IN /g, '$1') : r.signature;
      put(
        `${r.prokind === 'p' ? 'procedure' : 'function'} ${signature}`,
        `owner ${r.owner}; grants ${r.acl ?? 'default'}; kind ${r.prokind}\n${r.def ?? '(aggregate)'}`,
      );
    }

    for (const r of await rows(
      `SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) AS def, t.tgenabled
       FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
       WHERE c.relnamespace = ${ns} AND NOT t.tgisinternal`,
    )) {
      put(`trigger ${r.relname}.${r.tgname}`, `${r.def} (enabled ${r.tgenabled})`);
    }

    for (const r of await rows(
      `SELECT c.relname, pg_get_viewdef(c.oid) AS def FROM pg_class c
       WHERE c.relnamespace = ${ns} AND c.relkind IN ('v', 'm')`,
    )) {
      put(`view ${r.relname}`, r.def);
    }

    for (const r of await rows(
      `SELECT r.rulename, c.relname, pg_get_ruledef(r.oid) AS def
       FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
       WHERE c.relnamespace = ${ns} AND r.rulename <> '_RETURN'`,
    )) {
      put(`rule ${r.relname}.${r.rulename}`, r.def);
    }

    // Sequences, identity ones included, with the column that owns them.
    for (const r of await rows(
      `SELECT c.relname, format_type(s.seqtypid, NULL) AS type, s.seqstart, s.seqincrement, s.seqmin,
              s.seqmax, s.seqcache, s.seqcycle,
              (SELECT d.deptype::text || ' ' || oc.relname || '.' || a.attname
               FROM pg_depend d
               JOIN pg_class oc ON oc.oid = d.refobjid
               JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
               WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                 AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) AS owned_by
       FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
       WHERE c.relnamespace = ${ns}`,
    )) {
      put(
        `sequence ${r.relname}`,
        `${r.type} start ${r.seqstart} increment ${r.seqincrement} min ${r.seqmin} max ${r.seqmax} ` +
          `cache ${r.seqcache}${r.seqcycle ? ' cycle' : ''}; owned by ${r.owned_by ?? 'nothing'}`,
      );
    }

    for (const r of await rows(
      `SELECT t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod) AS base,
              (SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder) FROM pg_enum e
               WHERE e.enumtypid = t.oid) AS labels
       FROM pg_type t WHERE t.typnamespace = ${ns}`,
    )) {
      put(
        `type ${r.typname}`,
        `kind ${r.typtype}${r.typtype === 'd' ? ` over ${r.base}` : ''}${r.labels ? ` (${r.labels})` : ''}`,
      );
    }

    for (const r of await rows(
      `SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check
       FROM pg_policies WHERE schemaname = $1`,
    )) {
      put(
        `policy ${r.tablename}.${r.policyname}`,
        `${r.permissive} ${r.cmd} to ${r.roles} using ${r.qual} check ${r.with_check}`,
      );
    }

    // COMMENT ON texts, on anything in the schema.
    for (const r of await rows(
      `SELECT o.type, o.identity, d.description
       FROM pg_description d, LATERAL pg_identify_object(d.classoid, d.objoid, d.objsubid) o
       WHERE o.schema = $1`,
    )) {
      put(`comment on ${r.type} ${r.identity}`, r.description);
    }
  } finally {
    await client.query('RESET search_path').catch(() => {});
    client.release();
  }
  return described;
}

/** Lines of `a` and `b` as a diff ("-" only in a, "+" only in b), two lines of context around changes. */
function lineDiff(a: string, b: string): string {
  const x = a.split('\n');
  const y = b.split('\n');
  // Longest common subsequence, filled from the end so the walk below goes forwards.
  const lcs = Array.from({ length: x.length + 1 }, () => new Array<number>(y.length + 1).fill(0));
  for (let i = x.length - 1; i >= 0; i--) {
    for (let j = y.length - 1; j >= 0; j--) {
      lcs[i]![j] = x[i] === y[j] ? lcs[i + 1]![j + 1]! + 1 : Math.max(lcs[i + 1]![j]!, lcs[i]![j + 1]!);
    }
  }
  const out: { mark: ' ' | '-' | '+'; line: string }[] = [];
  let i = 0;
  let j = 0;
  while (i < x.length || j < y.length) {
    if (i < x.length && j < y.length && x[i] === y[j]) {
      out.push({ mark: ' ', line: x[i++]! });
      j++;
    } else if (i < x.length && (j === y.length || lcs[i + 1]![j]! >= lcs[i]![j + 1]!)) {
      out.push({ mark: '-', line: x[i++]! });
    } else {
      out.push({ mark: '+', line: y[j++]! });
    }
  }
  const near = (k: number) => out.slice(Math.max(0, k - 2), k + 3).some((o) => o.mark !== ' ');
  return out
    .map((o, k) => (near(k) ? `      ${o.mark} ${o.line}` : null))
    .filter((line, k, all) => line !== null || all[k - 1] !== null)
    .map((line) => line ?? '      …')
    .join('\n');
}

/** What differs between two described schemas, one paragraph per difference; empty when identical. */
function differences(
  a: Map<string, string>,
  b: Map<string, string>,
  names: { a: string; b: string },
): string[] {
  const found: string[] = [];
  for (const key of [...new Set([...a.keys(), ...b.keys()])].sort()) {
    const left = a.get(key);
    const right = b.get(key);
    if (left === right) continue;
    const indent = (text: string) => text.replace(/^/gm, '      ');
    if (right === undefined) found.push(`  ${key}: only in ${names.a}\n${indent(left!)}`);
    else if (left === undefined) found.push(`  ${key}: only in ${names.b}\n${indent(right)}`);
    else found.push(`  ${key}: differs (- ${names.a}, + ${names.b})\n${lineDiff(left, right)}`);
  }
  return found;
}

const fileName = (m: Migration) => `${String(m.version).padStart(3, '0')}_${m.name}`;
const NAMES = { a: 'the migrations', b: 'schema/current/schema.sql' };

describe('the current-schema snapshot (schema/current/schema.sql)', () => {
  let migrations: Migration[];
  const fresh = schemaFor('snap_fresh');
  const replayed = schemaFor('snap_replay');
  let freshResult: Awaited<ReturnType<typeof migrate>>;
  let replayedResult: Awaited<ReturnType<typeof migrate>>;

  before(async () => {
    migrations = await loadMigrations();
    // Checked first: a snapshot behind the migrations would make the fresh install apply
    // the newer files on top, and fail there if its body is already ahead of its header.
    const newest = migrations.at(-1)!;
    const { matches } = await loadSnapshot(migrations);
    assert.equal(
      fileName(matches),
      fileName(newest),
      `schema/current/schema.sql says "-- Matches migration: ${fileName(matches)}" but the newest migration is ${fileName(newest)}: bring the snapshot up to date, that line included`,
    );
    freshResult = await migrate(pool, fresh, log);
    // An existing install: its migrations table is already there (here empty, the same
    // table a fresh install makes), so migrate() replays every numbered file.
    await pool.query(`CREATE SCHEMA "${replayed}"`);
    await pool.query(`CREATE TABLE "${replayed}".migrations (LIKE "${fresh}".migrations INCLUDING ALL)`);
    replayedResult = await migrate(pool, replayed, log);
  });

  it('is installed whole on a fresh schema, which records every migration with its checksum', async () => {
    assert.equal(freshResult.snapshot && fileName(freshResult.snapshot), fileName(migrations.at(-1)!));
    assert.deepEqual(
      freshResult.applied.map((m) => m.version),
      migrations.map((m) => m.version),
    );
    const { rows } = await pool.query(
      `SELECT version, name, checksum FROM "${fresh}".migrations ORDER BY version`,
    );
    assert.deepEqual(
      rows,
      migrations.map((m) => ({ version: m.version, name: m.name, checksum: m.checksum })),
    );
    assert.deepEqual((await migrationStatus(pool, fresh)).pending, []);
    const again = await migrate(pool, fresh, log);
    assert.deepEqual(again, { applied: [] });
  });

  it('is not used on a schema that already has a migrations table: the files are applied', () => {
    assert.equal(replayedResult.snapshot, undefined);
    assert.deepEqual(
      replayedResult.applied.map((m) => m.version),
      migrations.map((m) => m.version),
    );
  });

  it('describes the same schema as the migrations, catalog entry by catalog entry', async () => {
    const fromMigrations = await describeSchema(replayed);
    const fromSnapshot = await describeSchema(fresh);
    // Not vacuous: the description reaches tables, functions, triggers and views.
    for (const key of [
      'column jobs.queue',
      'function append_events(events jsonb, expected_versions jsonb)',
      'procedure consume_tx_ids(how_many bigint)',
      'trigger jobs.jobs_notify',
      'view stored_tx_ids',
      'sequence events_position_seq',
    ]) {
      assert.ok(fromMigrations.has(key), `the catalog description has no "${key}"`);
    }
    const found = differences(fromMigrations, fromSnapshot, NAMES);
    if (found.length > 0) {
      assert.fail(
        `schema/current/schema.sql and the migrations build different schemas (${found.length} difference(s)); ` +
          `update the snapshot to match the migrations:\n${found.join('\n')}`,
      );
    }
  });

  it('the comparison names a changed default, a missing index and a changed function body', async () => {
    const changed = schemaFor('snap_changed');
    await migrate(pool, changed, log);
    const q = `"${changed}"`;
    await pool.query(`ALTER TABLE ${q}.jobs ALTER COLUMN priority SET DEFAULT 1`);
    await pool.query(`DROP INDEX ${q}.jobs_kept`);
    const { rows } = await pool.query(`SELECT pg_get_functiondef('${q}.defer_jobs'::regproc) AS def`);
    await pool.query(rows[0].def.replace('every task is required', 'each task is required'));
    const found = differences(await describeSchema(replayed), await describeSchema(changed), NAMES).join(
      '\n',
    );
    assert.match(
      found,
      /column jobs\.priority: differs.*\n\s+- #6 integer NOT NULL DEFAULT 0\n\s+\+ #6 integer NOT NULL DEFAULT 1\n/,
    );
    assert.match(found, /index jobs_kept: only in the migrations\n/);
    assert.match(
      found,
      /function defer_jobs\(.*\): differs.*\n(?:.*\n)*?\s+- .*every task is required.*\n\s+\+ .*each task is required/,
    );
  });
});
