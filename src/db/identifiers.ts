/** Schema names: the only identifier interpolated into SQL, checked and quoted here. */
import { ValidationError } from '../errors.js';

// Lower-case only, so a name means the same quoted or unquoted in psql, and short
// enough that `<schema>_jobs_<queue>` style NOTIFY channels stay under 63 bytes.
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,39}$/;

/** Checks a schema name and returns it double-quoted, ready to be the one interpolation in SQL. */
export function quoteSchema(name: unknown): string {
  return `"${validateSchemaName(name)}"`;
}

export function validateSchemaName(name: unknown): string {
  if (typeof name !== 'string' || !SCHEMA_NAME.test(name)) {
    throw new ValidationError(
      `schema name ${JSON.stringify(name)} is invalid: use 1-40 lower-case letters, digits and '_', starting with a letter or '_'`,
    );
  }
  if (name.startsWith('pg_')) {
    throw new ValidationError(
      `schema name "${name}" is invalid: names starting with "pg_" are reserved by PostgreSQL`,
    );
  }
  return name;
}
