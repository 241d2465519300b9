const NAME = /^[a-z_][a-z0-9_]{0,39}$/;
export function shopSchema(name) {
  if (!NAME.test(name))
    throw new Error(`shop schema "${name}" is invalid: use lower-case letters, digits and '_'`);
  return `"${name}"`;
}
export async function createShopTables(db, schema) {
  const s = shopSchema(schema);
  await db.query(`
    CREATE SCHEMA IF NOT EXISTS ${s};
    CREATE TABLE IF NOT EXISTS ${s}.revenue (
      version integer NOT NULL,
      customer text NOT NULL,
      day date NOT NULL,
      orders integer NOT NULL,
      amount_cents bigint NOT NULL,
      PRIMARY KEY (version, customer, day)
    );
    CREATE TABLE IF NOT EXISTS ${s}.digests (
      id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      customer text NOT NULL,
      orders integer NOT NULL,
      sent_at timestamptz NOT NULL DEFAULT now()
    );
  `);
}
//# sourceMappingURL=tables.js.map
