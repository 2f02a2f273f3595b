// A project that installed the old layout (the change log and the engine's tables in public) and
// used it: the migrations since move everything into the private schemas without losing a
// snapshot or a logged change, and capture goes on without a gap.
import assert from "node:assert/strict";
import { migrate } from "../shared/db/migrate.ts";
import { applySupabaseDefaults } from "../shared/db/supabase_defaults.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { createRestore } from "../shared/restore/history.ts";
import { snapshotAt } from "../shared/restore/point_in_time.ts";
import { validateSnapshot } from "../shared/restore/validate.ts";
import { cleanup, clearMoment, dbTest, emptyDatabase } from "./_db.ts";

/** The last migration of the layout with internal tables in public. */
const OLD_LAYOUT = "20261128000500";

const db = await emptyDatabase("layout");
const sql = db.sql;

await applySupabaseDefaults(sql);
await migrate(sql, { upTo: OLD_LAYOUT });
// An enum column: the old layout's stores kept it in the application's type.
await sql`create type public.note_mood as enum ('calm', 'busy')`;
await sql`create table public.notes (id bigint primary key, tenant_id text not null, body text,
  mood public.note_mood)`;
await sql`insert into public.notes select i, (i % 2 + 1)::text, 'note ' || i,
  case when i % 3 = 0 then 'busy' else 'calm' end::public.note_mood
  from generate_series(1, 20) i`;
// A snapshot and a day of capture, taken with the old layout's own SQL.
const [{ id: oldSnapshot }] = await sql<{ id: string }[]>`
  insert into public.backup_snapshots (tenant_id, label) values ('1', 'old layout') returning id`;
await sql`select pitr.snapshot_table(${oldSnapshot}, 0, 'public.notes'::regclass)`;
await sql`select public.pitr_capture_enable('public.notes')`;
const beforeEdits = await clearMoment(sql);
await sql`update public.notes set body = 'edited' where tenant_id = '1'`;
await sql`delete from public.notes where tenant_id = '1' and id > 15`;
const [{ logged }] = await sql<{ logged: string }[]>`
  select count(*) as logged from public.pitr_changes`;

const applied = await migrate(sql);

const bodies = async () =>
  (await sql<{ id: string; body: string }[]>`
    select id, body from public.notes where tenant_id = '1' order by id`)
    .map((r) => `${r.id}:${r.body}`);
const original = Array.from({ length: 10 }, (_, i) => `${2 * i + 2}:note ${2 * i + 2}`);

dbTest(
  "the migrations since the old layout applied, and nothing internal is left in public",
  async () => {
    assert.ok(applied.length > 0);
    const left = await sql<{ name: string }[]>`
    select c.relname::text as name from pg_class c
    where c.relnamespace = 'public'::regnamespace
      and (c.relname ~ '^pitr_' or c.relname in ('backup_stores', 'backup_store_heads',
        'backup_snapshot_tables', 'backup_protected_tables', 'backup_fk_constraints_cache'))
    union all
    select p.proname::text from pg_proc p
    where p.pronamespace = 'public'::regnamespace and p.proname ~ '^pitr_'`;
    assert.deepEqual([...left], []);
  },
);

dbTest("every logged change moved with the log, partitions included", async () => {
  const [{ n }] = await sql<{ n: string }[]>`select count(*) as n from pitr.changes`;
  assert.equal(Number(n), Number(logged));
  assert.ok(Number(logged) >= 10);
  const parts = await sql<{ schema: string }[]>`
    select c.relnamespace::regnamespace::text as schema from pg_inherits i
    join pg_class c on c.oid = i.inhrelid where i.inhparent = 'pitr.changes'::regclass`;
  assert.ok(parts.length >= 2 && parts.every((p) => p.schema === "pitr"));
});

dbTest("the API roles hold nothing in the private schemas after the move", async () => {
  const held = await sql<{ role: string; name: string }[]>`
    select r.role, c.oid::regclass::text as name
    from pg_class c cross join unnest(array['anon', 'authenticated', 'service_role']) r(role)
    where c.relnamespace in ('pitr'::regnamespace, 'pitr_store'::regnamespace)
      and c.relkind in ('r', 'p', 'v', 'S')
      and (case when c.relkind = 'S' then has_sequence_privilege(r.role, c.oid, 'USAGE,SELECT,UPDATE')
        else has_table_privilege(r.role, c.oid,
          'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER') end)`;
  assert.deepEqual([...held], []);
});

dbTest("a snapshot taken with the old layout validates and restores exactly", async () => {
  // Its store no longer depends on the application's enum: converted, checksums kept valid.
  const depends = await sql`select from pg_depend d join pg_class c on c.oid = d.objid
    where c.relnamespace = 'pitr_store'::regnamespace and d.refobjid = 'public.note_mood'::regtype`;
  assert.equal(depends.length, 0);
  const v = await validateSnapshot(sql, oldSnapshot);
  assert.equal(v.valid, true, JSON.stringify(v.checks));
  const { id } = await createRestore(sql, {
    snapshotId: oldSnapshot,
    tenantId: "1",
    strategy: "overwrite",
  });
  const status = await executeRestore(sql, id);
  assert.equal(status.status, "completed", JSON.stringify(status.error));
  assert.deepEqual(await bodies(), original);
});

dbTest("changes logged before the move rebuild the moment before them", async () => {
  await sql`update public.notes set body = 'after the move' where tenant_id = '1' and id = 2`;
  const s = await snapshotAt(sql, { tenantId: "1", at: beforeEdits });
  const { id } = await createRestore(sql, {
    snapshotId: s.snapshot_id,
    tenantId: "1",
    strategy: "overwrite",
  });
  assert.equal((await executeRestore(sql, id)).status, "completed");
  assert.deepEqual(await bodies(), original);
  // Capture kept going through the move: the update above was logged in the new place.
  const [{ n }] = await sql<{ n: string }[]>`
    select count(*) as n from pitr.changes where old_row like '%,"after the move",%'`;
  assert.equal(Number(n), 1);
});

cleanup(db);
