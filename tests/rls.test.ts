// Row level security on the backup tables, proven the way PostgREST runs queries: as role
// authenticated (or anon) with the JWT's claims in request.jwt.claims.
import assert from "node:assert/strict";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { runDrills } from "../shared/restore/drill.ts";
import { createRestore } from "../shared/restore/history.ts";
import { connect } from "../shared/db/client.ts";
import { cleanup, dbTest, storeOf, testDatabase } from "./_db.ts";

const db = await testDatabase("rls");
const sql = db.sql;

await sql`select public.seed_tenant(301, 5), public.seed_tenant(302, 5)`;
const s301 = await takeSnapshot(sql, { tenantId: "301" });
const s302 = await takeSnapshot(sql, { tenantId: "302" });
await createRestore(sql, { snapshotId: s302.snapshot_id, tenantId: "302", strategy: "overwrite" });
await runDrills(sql, "301");

const TABLES = [
  "backup_snapshots",
  "backup_pitr_rollback_history",
  "backup_pitr_drills",
] as const;

async function as<T>(
  role: "authenticated" | "anon",
  tenant: string | null,
  fn: (tx: typeof sql) => Promise<T>,
  pitrRole: "viewer" | "admin" | null = "viewer",
) {
  let out: T;
  try {
    await sql.begin(async (tx) => {
      const meta = tenant
        ? { tenant_id: tenant, ...(pitrRole ? { pitr_role: pitrRole } : {}) }
        : {};
      const claims = JSON.stringify({ role, app_metadata: meta });
      await tx`select set_config('request.jwt.claims', ${claims}, true)`;
      await tx`select set_config('role', ${role}, true)`;
      out = await fn(tx as unknown as typeof sql);
      throw new Error("rollback");
    });
  } catch (e) {
    if ((e as Error).message !== "rollback") throw e;
  }
  return out!;
}

dbTest("a viewer or admin reads only the tenant in their JWT", async () => {
  for (const table of TABLES) {
    const tenants = await as(
      "authenticated",
      "301",
      (tx) => tx<{ tenant_id: string }[]>`select distinct tenant_id from public.${sql(table)}`,
    );
    const seen = tenants.map((r) => r.tenant_id);
    const [{ total }] = await sql<
      { total: string }[]
    >`select count(distinct tenant_id) as total from public.${sql(table)}`;
    assert.ok(seen.every((t) => t === "301"), `${table}: ${seen}`);
    if (table !== "backup_pitr_rollback_history") assert.deepEqual(seen, ["301"], table);
    assert.ok(Number(total) >= seen.length);
  }
  const own = await as(
    "authenticated",
    "302",
    (tx) => tx<{ id: string }[]>`select id from public.backup_snapshots`,
    "admin",
  );
  assert.deepEqual(own.map((r) => r.id), [s302.snapshot_id]);
});

dbTest(
  "a user of the tenant without app_metadata.pitr_role (or with another) reads nothing",
  async () => {
    for (const table of TABLES) {
      for (const pitrRole of [null, "owner" as "admin"]) {
        const rows = await as(
          "authenticated",
          "301",
          (tx) => tx`select * from public.${sql(table)}`,
          pitrRole,
        );
        assert.equal(rows.length, 0, `${table} with pitr_role ${pitrRole}`);
      }
    }
  },
);

dbTest("a JWT without a tenant reads nothing, and anon reads nothing", async () => {
  const none = await as("authenticated", null, (tx) => tx`select id from public.backup_snapshots`);
  assert.equal(none.length, 0);
  await assert.rejects(
    as("anon", "301", (tx) => tx`select id from public.backup_snapshots`),
    /permission denied/,
  );
});

dbTest("authenticated users cannot write any backup table, nor read the stored rows", async () => {
  await assert.rejects(
    as(
      "authenticated",
      "301",
      (tx) => tx`delete from public.backup_snapshots where id = ${s301.snapshot_id}`,
    ),
    /permission denied/,
  );
  await assert.rejects(
    as(
      "authenticated",
      "301",
      (tx) => tx`update public.backup_pitr_rollback_history set status = 'failed'`,
    ),
    /permission denied/,
  );
  await assert.rejects(
    as(
      "authenticated",
      "301",
      (tx) => tx`insert into pitr.backup_protected_tables (table_name) values ('x')`,
    ),
    /permission denied/,
  );
  const store = await storeOf(sql, s301.tables[0].id);
  await assert.rejects(
    as("authenticated", "301", (tx) => tx`select * from pitr_store.${sql(store.table)}`),
    /permission denied/,
  );
  await assert.rejects(
    as("authenticated", "301", (tx) => tx`select * from pitr.backup_snapshot_tables`, "admin"),
    /permission denied/,
  );
  const [{ n }] = await sql<
    { n: string }[]
  >`select count(*) as n from public.backup_snapshots where id = ${s301.snapshot_id}`;
  assert.equal(Number(n), 1);
});

dbTest(
  "the engine never reads an application table through row level security: a role subject to it gets an error, not a partial snapshot",
  async () => {
    // A service connected as a role without BYPASSRLS (a least-privilege setup), or a table with
    // FORCE ROW LEVEL SECURITY: its policies would hide rows from the snapshot's read.
    const role = `pitr_rls_probe_${crypto.randomUUID().slice(0, 8)}`;
    const [{ me }] = await sql<{ me: string }[]>`select current_user as me`;
    await sql.unsafe(`
      create table public.rls_notes (id int primary key, tenant_id bigint not null, note text);
      insert into public.rls_notes values (1, 601, 'a'), (2, 601, 'b'), (3, 601, 'c');
      alter table public.rls_notes enable row level security;
      alter table public.rls_notes force row level security;
      create policy only_the_first on public.rls_notes using (id = 1);
      create role "${role}" login nobypassrls password 'probe';
      grant "${me}" to "${role}";`);
    const url = new URL(db.url);
    url.username = role;
    url.password = "probe";
    const probe = connect(url.toString(), { max: 2 });
    try {
      const [{ seen }] = await probe<{ seen: number }[]>`
        select count(*)::int as seen from public.rls_notes where tenant_id = 601`;
      assert.equal(seen, 1, "the policy hides two of the three rows from this role");
      await assert.rejects(
        takeSnapshot(probe, { tenantId: "601", tables: ["public.rls_notes"] }),
        /row-level security/,
      );
      const [{ n }] = await sql<{ n: number }[]>`
        select count(*)::int as n from public.backup_snapshots where tenant_id = '601'`;
      assert.equal(n, 0, "no snapshot was recorded");
    } finally {
      await probe.end();
      await sql.unsafe(`reassign owned by "${role}" to "${me}"; drop owned by "${role}";
        drop role "${role}"; drop table public.rls_notes`);
    }
  },
);

cleanup(db);
