// Migrations apply in order, record their versions the way the Supabase CLI does, and a second
// run is a no-op.
import assert from "node:assert/strict";
import { migrate, readMigrations } from "../shared/db/migrate.ts";
import { cleanup, dbTest, testDatabase } from "./_db.ts";

const db = await testDatabase("migrate");
const sql = db.sql;

dbTest("every migration is recorded in supabase_migrations.schema_migrations", async () => {
  const files = await readMigrations();
  const rows = await sql<{ version: string; name: string; statements: string[] }[]>`
    select version, name, statements from supabase_migrations.schema_migrations order by version`;
  assert.deepEqual(rows.map((r) => r.version), files.map((f) => f.version));
  assert.deepEqual(rows.map((r) => r.name), files.map((f) => f.name));
  assert.ok(rows.every((r) => r.statements.length === 1 && r.statements[0].length > 0));
});

dbTest("running the migrations again applies nothing and changes no object", async () => {
  const objects = async () =>
    (await sql<{ n: string }[]>`select count(*) as n from pg_class c
      join pg_namespace n on n.oid = c.relnamespace where n.nspname in ('public', 'pitr')`)[0].n;
  const before = await objects();
  assert.deepEqual(await migrate(sql), []);
  assert.deepEqual(await migrate(sql), []);
  assert.equal(await objects(), before);
});

dbTest(
  "the Supabase roles and auth helpers exist, service_role bypasses row level security",
  async () => {
    const roles = await sql<{ rolname: string; rolbypassrls: boolean }[]>`
    select rolname, rolbypassrls from pg_roles
    where rolname in ('anon', 'authenticated', 'service_role') order by rolname`;
    assert.deepEqual(roles.map((r) => [r.rolname, r.rolbypassrls]), [
      ["anon", false],
      ["authenticated", false],
      ["service_role", true],
    ]);
    const [{ t }] = await sql.begin(async (tx) => {
      await tx`select set_config('request.jwt.claims', '{"sub":"00000000-0000-0000-0000-000000000001","app_metadata":{"tenant_id":"7"}}', true)`;
      return await tx<{ t: string }[]>`select auth.jwt() -> 'app_metadata' ->> 'tenant_id' as t`;
    });
    assert.equal(t, "7");
  },
);

cleanup(db);
