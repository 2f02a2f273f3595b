// What Supabase's API roles can reach of this project, found by the test itself: a database set up
// as a new Supabase project, the migrations, a day of work (snapshots, a restore, capture and
// writes, a point-in-time snapshot, a drill), then every relation, sequence and function that was
// not there before (run-time stores and log partitions included) is tried as each kind of caller.
// A table or function added later is covered without editing this file.
import assert from "node:assert/strict";
import { migrate } from "../shared/db/migrate.ts";
import { applySupabaseDefaults } from "../shared/db/supabase_defaults.ts";
import { runDrills } from "../shared/restore/drill.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { createRestore } from "../shared/restore/history.ts";
import { snapshotAt } from "../shared/restore/point_in_time.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { cleanup, clearMoment, dbTest, emptyDatabase } from "./_db.ts";

const INSUFFICIENT_PRIVILEGE = "42501";

const db = await emptyDatabase("security");
const sql = db.sql;

async function oids(): Promise<{ rels: Set<number>; procs: Set<number> }> {
  const [r] = await sql<{ rels: number[]; procs: number[] }[]>`
    select array(select oid::int8 from pg_class) as rels, array(select oid::int8 from pg_proc) as procs`;
  return { rels: new Set(r.rels.map(Number)), procs: new Set(r.procs.map(Number)) };
}

// Before the project: a Supabase project's defaults only.
await applySupabaseDefaults(sql);
const before = await oids();
await migrate(sql);
const migrated = await oids();
// The application (the test fixture), whose own objects are its business, not the project's.
await sql.unsafe(await Deno.readTextFile(new URL("./fixtures/app.sql", import.meta.url)));
const app = await oids();
const appRels = new Set([...app.rels].filter((o) => !migrated.rels.has(o)));
const appProcs = new Set([...app.procs].filter((o) => !migrated.procs.has(o)));

// A day of work, so that every kind of run-time object exists.
await sql`select public.seed_tenant(401, 10), public.seed_tenant(402, 10)`;
await sql`select pitr.capture_enable('public.users')`;
const s401 = await takeSnapshot(sql, { tenantId: "401" });
await takeSnapshot(sql, { tenantId: "402" });
const moment = await clearMoment(sql);
await sql`update public.users set display_name = 'changed' where tenant_id = 401`;
await sql`delete from public.enrollments where tenant_id = 401`;
const { id: restoreId } = await createRestore(sql, {
  snapshotId: s401.snapshot_id,
  tenantId: "401",
  strategy: "overwrite",
});
const restored = await executeRestore(sql, restoreId);
await snapshotAt(sql, { tenantId: "401", at: moment, tables: ["public.users"] });
await runDrills(sql, "401");

interface Relation {
  oid: number;
  name: string;
  /** schema.table unquoted, for sql(): it splits at the dot and quotes each part. */
  qualified: string;
  relkind: string;
  has_tenant: boolean;
  first_column: string | null;
  rls: boolean;
  schema: string;
}

const everyRel = await sql<Relation[]>`
  select c.oid::int8 as oid, c.oid::regclass::text as name, c.relkind::text as relkind,
    n.nspname || '.' || c.relname as qualified,
    n.nspname::text as schema, c.relrowsecurity as rls,
    exists (select from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id'
      and a.attnum > 0 and not a.attisdropped) as has_tenant,
    (select a.attname::text from pg_attribute a where a.attrelid = c.oid and a.attnum > 0
      and not a.attisdropped and a.attgenerated = '' and a.attidentity = '' order by a.attnum limit 1)
      as first_column
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
  where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
    and n.nspname !~ '^pg_' and n.nspname <> 'information_schema'
  order by 2`;
const relations = everyRel.filter((r) =>
  !before.rels.has(Number(r.oid)) && !appRels.has(Number(r.oid))
);

interface Proc {
  oid: number;
  signature: string;
  schema: string;
  returns: string;
  /** A call with a NULL of each argument's type, written by format() from the catalog. */
  call: string;
}
const everyProc = await sql<Proc[]>`
  select p.oid::int8 as oid, p.oid::regprocedure::text as signature, n.nspname::text as schema,
    format_type(p.prorettype, null) as returns,
    format('select %I.%I(%s)', n.nspname, p.proname,
      (select string_agg(format('null::%s', format_type(t, null)), ', ')
       from unnest(p.proargtypes) t)) as call
  from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  where n.nspname !~ '^pg_' and n.nspname <> 'information_schema' and p.prokind = 'f'
  order by 2`;
const functions = everyProc.filter((p) =>
  !before.procs.has(Number(p.oid)) && !appProcs.has(Number(p.oid))
);

interface Persona {
  label: string;
  role: "anon" | "authenticated";
  tenant?: string;
  pitrRole?: string;
}
const PERSONAS: Persona[] = [
  { label: "anon", role: "anon" },
  { label: "an admin of another tenant", role: "authenticated", tenant: "402", pitrRole: "admin" },
  { label: "a user of the tenant without pitr_role", role: "authenticated", tenant: "401" },
  { label: "a viewer of the tenant", role: "authenticated", tenant: "401", pitrRole: "viewer" },
];

/** Runs `fn` as the persona, the way PostgREST does, in a transaction that is rolled back. */
async function as<T>(
  p: Persona,
  fn: (tx: typeof sql) => Promise<T>,
): Promise<T | { code: string }> {
  const ROLLBACK = new Error("rollback");
  let out: T | undefined;
  try {
    await sql.begin(async (tx) => {
      const meta = p.tenant
        ? { tenant_id: p.tenant, ...(p.pitrRole ? { pitr_role: p.pitrRole } : {}) }
        : {};
      await tx`select set_config('request.jwt.claims', ${
        JSON.stringify({ role: p.role, app_metadata: meta })
      }, true)`;
      await tx`select set_config('role', ${p.role}, true)`;
      out = await fn(tx as unknown as typeof sql);
      throw ROLLBACK;
    });
  } catch (e) {
    if (e !== ROLLBACK) return { code: (e as { code?: string }).code ?? String(e) };
  }
  return out as T;
}

const refused = (r: unknown) =>
  typeof r === "object" && r !== null && (r as { code?: string }).code === INSUFFICIENT_PRIVILEGE;

dbTest("the day of work happened: a restore completed and run-time objects exist", () => {
  assert.equal(restored.status, "completed");
  const names = relations.map((r) => r.name);
  assert.ok(names.some((n) => n.startsWith("pitr_store.")), "a store");
  assert.ok(names.some((n) => /^pitr\.changes_\d{8}$/.test(n)), "a day partition of the log");
  assert.ok(functions.some((f) => /^pitr\.capture_\d+\(\)$/.test(f.signature)), "a capture fn");
  assert.ok(relations.length > 10 && functions.length > 20);
  return Promise.resolve();
});

dbTest("only the three frontend tables are in public, each with RLS on", () => {
  const exposed = relations.filter((r) => r.schema === "public");
  assert.deepEqual(exposed.map((r) => r.name).sort(), [
    "backup_pitr_drills",
    "backup_pitr_rollback_history",
    "backup_snapshots",
  ]);
  assert.ok(exposed.every((r) => r.rls), "row level security on");
  assert.deepEqual(functions.filter((f) => f.schema === "public"), []);
  return Promise.resolve();
});

dbTest(
  "no API role holds a write, TRUNCATE, REFERENCES or TRIGGER privilege on anything",
  async () => {
    const held = await sql<{ role: string; name: string; privilege: string }[]>`
    select r.role, c.oid::regclass::text as name, p.privilege
    from unnest(${relations.map((r) => r.oid)}::oid[]) c(oid)
    cross join unnest(array['anon', 'authenticated', 'service_role']) r(role)
    cross join unnest(array['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'])
      p(privilege)
    join pg_class k on k.oid = c.oid
    where k.relkind <> 'S' and has_table_privilege(r.role, c.oid, p.privilege)`;
    assert.deepEqual([...held], []);
    const sequences = await sql<{ role: string; name: string }[]>`
    select r.role, c.oid::regclass::text as name
    from unnest(${relations.filter((r) => r.relkind === "S").map((r) => r.oid)}::oid[]) c(oid)
    cross join unnest(array['anon', 'authenticated', 'service_role']) r(role)
    where has_sequence_privilege(r.role, c.oid, 'USAGE,SELECT,UPDATE')`;
    assert.deepEqual([...sequences], []);
  },
);

dbTest(
  "every relation read as each caller returns no row of another tenant, or is refused",
  async () => {
    for (const rel of relations) {
      for (const p of PERSONAS) {
        const r = await as(p, (tx) =>
          tx<{ r: Record<string, unknown> }[]>`
        select to_jsonb(x) as r from ${tx(rel.qualified)} x`);
        if (refused(r)) continue;
        assert.ok(Array.isArray(r), `${rel.name} as ${p.label}: ${JSON.stringify(r)}`);
        for (const { r: row } of r as { r: Record<string, unknown> }[]) {
          // A row may be seen only by a viewer or admin of its own tenant.
          const ok = rel.has_tenant && p.pitrRole !== undefined &&
            String(row.tenant_id) === p.tenant;
          assert.ok(ok, `${rel.name} as ${p.label} returned ${JSON.stringify(row).slice(0, 200)}`);
        }
      }
    }
  },
);

dbTest("every write to every relation as each caller is refused", async () => {
  for (const rel of relations) {
    const name = rel.qualified;
    const target = sql(name);
    for (const p of PERSONAS) {
      const attempts = rel.relkind === "S"
        ? [(tx: typeof sql) => tx`select nextval(${name}::regclass)`]
        : [
          (tx: typeof sql) => tx`insert into ${target} default values`,
          (tx: typeof sql) => tx`delete from ${target}`,
          (tx: typeof sql) => tx`truncate ${target}`,
          ...(rel.first_column
            ? [
              (tx: typeof sql) =>
                tx`update ${target} set ${tx(rel.first_column!)} = ${tx(rel.first_column!)}`,
            ]
            : []),
        ];
      for (const attempt of attempts) {
        const r = await as(p, attempt);
        assert.ok(
          refused(r),
          `a write to ${name} as ${p.label} was not refused: ${JSON.stringify(r)}`,
        );
      }
    }
  }
});

dbTest(
  "no function of the project can be called by anon, authenticated or service_role",
  async () => {
    const callable = await sql<{ role: string; signature: string }[]>`
    select r.role, p.oid::regprocedure::text as signature
    from unnest(${functions.map((f) => f.oid)}::oid[]) p(oid)
    join pg_proc f on f.oid = p.oid
    cross join unnest(array['anon', 'authenticated', 'service_role']) r(role)
    where has_function_privilege(r.role, p.oid, 'EXECUTE')
      and has_schema_privilege(r.role, f.pronamespace, 'USAGE')`;
    assert.deepEqual([...callable], []);
    // And tried: each is refused before it runs, whatever its arguments.
    for (const f of functions.filter((f) => f.returns !== "trigger")) {
      for (const p of PERSONAS) {
        // Text made by format('%I') from the catalog above, never from input.
        const r = await as(p, (tx) => tx.unsafe(f.call));
        assert.ok(refused(r), `${f.signature} as ${p.label}: ${JSON.stringify(r)}`);
      }
    }
  },
);

dbTest("the API roles cannot even use the private schemas", async () => {
  const usable = await sql<{ role: string; schema: string }[]>`
    select r.role, s.schema from unnest(array['pitr', 'pitr_store']) s(schema)
    cross join unnest(array['anon', 'authenticated', 'service_role']) r(role)
    where has_schema_privilege(r.role, s.schema, 'USAGE')`;
  assert.deepEqual([...usable], []);
});

cleanup(db);
