// A moment the change log cannot rebuild exactly is refused, with nothing written: a row changed
// twice by one statement, once by a cascading foreign key of its own table (PostgreSQL hands both
// changes to one firing of the capture trigger), or changed again by a trigger of the application
// before the statement's own changes were logged. A row the application changes twice by its own
// statements still restores exactly (20261129002300_moments_refused_where_change_order_unknown.sql).
import assert from "node:assert/strict";
import { createRestore } from "../shared/restore/history.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { Unprocessable } from "../shared/restore/errors.ts";
import { snapshotAt, validateAt } from "../shared/restore/point_in_time.ts";
import { cleanup, clearMoment, dbTest, testDatabase } from "./_db.ts";

const db = await testDatabase("pit_order");
const sql = db.sql;

// A tree: each node may point at another of its tenant's, and follows it when its key changes.
await sql`create table public.tree (tenant_id bigint not null, id int not null, parent int,
  note text, primary key (tenant_id, id),
  foreign key (tenant_id, parent) references public.tree (tenant_id, id) on update cascade)`;
// A table whose application trigger marks each row it writes, with an UPDATE of its own.
await sql`create table public.marked (tenant_id bigint not null, id int not null, body text,
  marked boolean not null default false, primary key (tenant_id, id))`;
await sql`create function public.mark_row() returns trigger language plpgsql as $$
  begin
    if not new.marked then
      update public.marked set marked = true where tenant_id = new.tenant_id and id = new.id;
    end if;
    return null;
  end $$`;
await sql`create trigger mark_row after insert or update on public.marked
  for each row execute function public.mark_row()`;
for (const t of ["public.tree", "public.marked"]) await sql`select pitr.capture_enable(${t})`;

const rows = (table: string, tenant: number) =>
  sql.unsafe(`select * from ${table} where tenant_id = $1 order by id`, [tenant]);

/** The moment's snapshot of one table is refused as moment_order_unknown; nothing is written. */
async function refused(tenant: number, at: string, table: string) {
  const [{ n: before }] = await sql<{ n: number }[]>`
    select count(*)::int as n from public.backup_snapshots`;
  await assert.rejects(
    snapshotAt(sql, { tenantId: String(tenant), at, tables: [table] }),
    (e: unknown) =>
      e instanceof Unprocessable && e.code === "moment_order_unknown" &&
      e.message.includes(table),
  );
  const [{ n: after }] = await sql<{ n: number }[]>`
    select count(*)::int as n from public.backup_snapshots`;
  assert.equal(after, before);
  // Validate says the same, as the table's failed change_log check.
  const v = await validateAt(sql, { tenantId: String(tenant), at, tables: [table] });
  assert.equal(v.valid, false);
  const failed = v.checks.find((c) => c.check === "change_log" && !c.ok);
  assert.ok(failed?.message.includes("the change log does not keep the order"), failed?.message);
}

/** Restores the tenant's table to the moment; it must complete. */
async function restoreTo(tenant: number, at: string, table: string) {
  const snapshot = await snapshotAt(sql, { tenantId: String(tenant), at, tables: [table] });
  const { id } = await createRestore(sql, {
    snapshotId: snapshot.snapshot_id,
    tenantId: String(tenant),
    strategy: "overwrite",
  });
  const status = await executeRestore(sql, id);
  assert.equal(status.status, "completed", JSON.stringify(status.error));
}

dbTest(
  "a moment before a key change that its own cascade followed in the same row is refused",
  async () => {
    await sql`insert into public.tree values (701, 1, null, 'root'), (701, 2, null, 'leaf')`;
    await sql`update public.tree set parent = 1 where tenant_id = 701`;
    const at = await clearMoment(sql);
    const then = await rows("public.tree", 701);
    // Row 1 points at itself: the cascade changes the row the statement just changed.
    await sql`update public.tree set id = 3 where tenant_id = 701 and id = 1`;
    await refused(701, at, "public.tree");
    // A later moment, after that statement, rebuilds and restores as before.
    const later = await clearMoment(sql);
    const now = await rows("public.tree", 701);
    await sql`update public.tree set note = 'edited' where tenant_id = 701`;
    await restoreTo(701, later, "public.tree");
    assert.deepEqual(await rows("public.tree", 701), now);
    assert.notDeepEqual(now, then);
  },
);

dbTest("a moment before a row the application's trigger changed again is refused", async () => {
  await sql`insert into public.marked (tenant_id, id, body) values (702, 1, 'first')`;
  const at = await clearMoment(sql);
  await sql`update public.marked set body = 'second', marked = false where tenant_id = 702`;
  await refused(702, at, "public.marked");
});

dbTest(
  "a row the application changes twice in one transaction still restores exactly",
  async () => {
    await sql`insert into public.tree values (703, 1, null, 'kept')`;
    const at = await clearMoment(sql);
    const then = await rows("public.tree", 703);
    await sql.begin(async (tx) => {
      await tx`insert into public.tree values (703, 2, 1, 'added')`;
      await tx`update public.tree set note = 'changed' where tenant_id = 703`;
      await tx`update public.tree set note = 'changed again' where tenant_id = 703 and id = 2`;
    });
    await restoreTo(703, at, "public.tree");
    assert.deepEqual(await rows("public.tree", 703), then);
  },
);

cleanup(db);
