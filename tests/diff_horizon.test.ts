// The diff leaves out the rows unchanged since the snapshot (pitr.horizon_age): a row whose
// version was written before the snapshot's read began. These tests change rows in every way the
// shortcut could miss (a transaction open across the snapshot, rows frozen since, a horizon that
// no longer describes this database) and require the restore to be exact anyway.
import assert from "node:assert/strict";
import { planRestore } from "../shared/restore/plan.ts";
import { snapshotIn, takeSnapshot } from "../shared/restore/snapshot.ts";
import { validateSnapshot } from "../shared/restore/validate.ts";
import { cleanup, dbTest, restoreSnapshot, storeOf, testDatabase } from "./_db.ts";

const db = await testDatabase("diff_horizon");
const sql = db.sql;

await sql.unsafe(`
  create schema hz;
  create table hz.items (id bigint primary key, tenant_id text not null, name text, qty int,
    doc jsonb);
  insert into pitr.backup_protected_tables (table_schema, table_name) values ('hz', 'items');
`);

async function rows(tenant: string): Promise<string[]> {
  const r = await sql<{ t: string }[]>`
    select x::text as t from hz.items x where tenant_id = ${tenant} order by id`;
  return r.map((x) => x.t);
}

async function restore(snapshotId: string, tenant: string) {
  const status = await restoreSnapshot(sql, {
    snapshotId,
    tenantId: tenant,
    strategy: "overwrite",
  });
  assert.equal(status.status, "completed", JSON.stringify(status.error));
  return status;
}

async function seed(tenant: string, base: number) {
  await sql`insert into hz.items
    select ${base}::bigint + g, ${tenant}, 'item ' || g, g, jsonb_build_object('g', g)
    from generate_series(1, 50) g`;
}

/** The horizon age the diff of this snapshot's table uses, or null when it compares every row. */
async function horizonAge(snapshotId: string): Promise<number | null> {
  const [{ age }] = await sql<{ age: number | null }[]>`
    select pitr.horizon_age(id) as age from pitr.backup_snapshot_tables
    where snapshot_id = ${snapshotId}`;
  return age;
}

dbTest(
  "a live snapshot has a horizon; an undo snapshot has none and is compared in full",
  async () => {
    await seed("h1", 1000);
    const s = await takeSnapshot(sql, { tenantId: "h1" });
    const before = await rows("h1");
    assert.ok((await horizonAge(s.snapshot_id)) !== null);
    await sql`update hz.items set qty = -1 where tenant_id = 'h1' and id % 3 = 0`;
    await sql`delete from hz.items where tenant_id = 'h1' and id % 7 = 0`;
    const damaged = await rows("h1");
    const status = await restore(s.snapshot_id, "h1");
    assert.deepEqual(await rows("h1"), before);
    assert.equal(await horizonAge(status.undo_snapshot_id!), null);
    await restore(status.undo_snapshot_id!, "h1");
    assert.deepEqual(await rows("h1"), damaged);
  },
);

dbTest(
  "a row written by a transaction open across the snapshot, committed after it, is restored",
  async () => {
    await seed("h2", 2000);
    const before = await rows("h2");
    // The writer's transaction has its id before the snapshot's read begins and commits after:
    // its rows are younger than the horizon and must be compared.
    const writer = await sql.reserve();
    try {
      await writer`begin`;
      await writer`update hz.items set name = 'open across' where tenant_id = 'h2' and id = 2001`;
      await writer`insert into hz.items values (2999, 'h2', 'new in open tx', 0, null)`;
      const s = await takeSnapshot(sql, { tenantId: "h2" });
      await writer`commit`;
      assert.deepEqual((await rows("h2")).length, before.length + 1);
      const plan = await planRestore(sql, { snapshotId: s.snapshot_id });
      assert.deepEqual(
        [plan.totals.insert, plan.totals.update, plan.totals.delete],
        [0, 1, 1],
      );
      await restore(s.snapshot_id, "h2");
      assert.deepEqual(await rows("h2"), before);
    } finally {
      writer.release();
    }
  },
);

dbTest("rows frozen since the snapshot and rows changed after it restore exactly", async () => {
  await seed("h3", 3000);
  const s = await takeSnapshot(sql, { tenantId: "h3" });
  const before = await rows("h3");
  await sql`update hz.items set doc = '{"changed": true}' where tenant_id = 'h3' and id < 3010`;
  await sql`delete from hz.items where tenant_id = 'h3' and id > 3045`;
  await sql`vacuum (freeze) hz.items`;
  await sql`update hz.items set qty = qty + 100 where tenant_id = 'h3' and id between 3020 and 3025`;
  await restore(s.snapshot_id, "h3");
  assert.deepEqual(await rows("h3"), before);
});

dbTest(
  "a horizon whose row was not written by the snapshot's own transaction is not used",
  async () => {
    await seed("h4", 4000);
    const s = await takeSnapshot(sql, { tenantId: "h4" });
    const before = await rows("h4");
    await sql`update hz.items set name = 'changed' where tenant_id = 'h4' and id % 2 = 0`;
    // As after a logical dump and restore: the horizon's values are those of another history
    // (here one that would call every row unchanged), written by another transaction.
    await sql`update pitr.snapshot_horizons set horizon = pg_current_xact_id()
      where snapshot_id = ${s.snapshot_id}`;
    assert.equal(await horizonAge(s.snapshot_id), null);
    const plan = await planRestore(sql, { snapshotId: s.snapshot_id });
    assert.equal(plan.totals.update, 25);
    await restore(s.snapshot_id, "h4");
    assert.deepEqual(await rows("h4"), before);
  },
);

dbTest("other tenants' rows are not rewritten by a restore that uses the horizon", async () => {
  await seed("h5", 5000);
  await seed("h6", 6000);
  const s = await takeSnapshot(sql, { tenantId: "h5" });
  await sql`update hz.items set qty = 0 where tenant_id = 'h5'`;
  const xmins = await sql`select id, xmin::text from hz.items where tenant_id = 'h6' order by id`;
  await restore(s.snapshot_id, "h5");
  assert.deepEqual(
    await sql`select id, xmin::text from hz.items where tenant_id = 'h6' order by id`,
    xmins,
  );
});

/** A plan's refusal code, or "planned" when it plans. */
async function planOutcome(snapshotId: string): Promise<string> {
  try {
    await planRestore(sql, { snapshotId });
    return "planned";
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
}

dbTest(
  "a plan recomputes the checksum in its diff: a forged, missing or extra stored row it would restore is refused",
  async () => {
    await seed("h7", 7000);
    const s = await takeSnapshot(sql, { tenantId: "h7" });
    assert.ok((await horizonAge(s.snapshot_id)) !== null);
    const store = await storeOf(sql, s.tables.find((t) => t.name === "hz.items")!.id);
    const at = (id: number) =>
      sql`
      select ctid from pitr_store.${sql(store.table)} where pitr_tenant = 'h7' and id = ${id}`;
    await sql`update hz.items set qty = 99 where tenant_id = 'h7' and id in (7001, 7002)`;
    assert.equal(await planOutcome(s.snapshot_id), "planned");

    // The stored values of a row the restore would write (its live row changed since).
    await sql`update pitr_store.${sql(store.table)} set name = 'forged'
      where ctid = (${(await at(7001))[0].ctid})::tid`;
    assert.equal(await planOutcome(s.snapshot_id), "snapshot_invalid");
    await sql`update pitr_store.${sql(store.table)} set name = 'item 1'
      where ctid = (${(await at(7001))[0].ctid})::tid`;
    assert.equal(await planOutcome(s.snapshot_id), "planned");

    // The stored hash of a row whose live row is unchanged: it counts with that hash.
    await sql`update pitr_store.${sql(store.table)} set pitr_hash = pitr_hash + 1
      where ctid = (${(await at(7010))[0].ctid})::tid`;
    assert.equal(await planOutcome(s.snapshot_id), "snapshot_invalid");
    await sql`update pitr_store.${sql(store.table)} set pitr_hash = pitr_hash - 1
      where ctid = (${(await at(7010))[0].ctid})::tid`;

    // A stored row gone, and a stored row added.
    const [gone] = await sql`delete from pitr_store.${sql(store.table)}
      where ctid = (${(await at(7020))[0].ctid})::tid returning *`;
    assert.equal(await planOutcome(s.snapshot_id), "snapshot_invalid");
    await sql`insert into pitr_store.${sql(store.table)}
      select * from jsonb_populate_record(null::pitr_store.${sql(store.table)}, ${sql.json(gone)})`;
    assert.equal(await planOutcome(s.snapshot_id), "planned");
    await sql`insert into pitr_store.${sql(store.table)}
      select * from jsonb_populate_record(null::pitr_store.${sql(store.table)}, ${sql.json(gone)})`;
    assert.equal(await planOutcome(s.snapshot_id), "snapshot_invalid");
  },
);

dbTest(
  "a forged stored row whose live row is unchanged: validate refuses it, the plan and the restore, which keep the live row, are exact",
  async () => {
    await seed("h8", 8000);
    const s = await takeSnapshot(sql, { tenantId: "h8" });
    const before = await rows("h8");
    const store = await storeOf(sql, s.tables.find((t) => t.name === "hz.items")!.id);
    await sql`update pitr_store.${sql(store.table)} set name = 'forged'
      where pitr_tenant = 'h8' and id = 8030`;
    assert.equal((await validateSnapshot(sql, s.snapshot_id)).valid, false);
    await sql`update hz.items set qty = -5 where tenant_id = 'h8' and id in (8001, 8002)`;
    const plan = await planRestore(sql, { snapshotId: s.snapshot_id });
    assert.equal(plan.totals.update, 2);
    await restore(s.snapshot_id, "h8");
    assert.deepEqual(await rows("h8"), before);
  },
);

/**
 * A snapshot of a tenant taken as takeSnapshot takes it (one REPEATABLE READ transaction, its
 * horizon recorded), and whether it compared the table's rows with the store's (pitr.store_rows).
 */
async function snapshotCompared(tenant: string): Promise<{ id: string; compared: boolean }> {
  return await sql.begin("isolation level repeatable read", async (tx) => {
    await tx`select set_config('track_functions', 'all', true)`;
    const s = await snapshotIn(tx, { tenantId: tenant });
    await tx`select pitr.record_horizon(${s.snapshot_id})`;
    const [{ n }] = await tx<{ n: number }[]>`select coalesce(pg_stat_get_xact_function_calls(
      'pitr.store_rows(bigint,text,bigint,text[],text)'::regprocedure), 0)::int as n`;
    return { id: s.snapshot_id, compared: n > 0 };
  });
}

/**
 * A snapshot of the tenant whose horizon follows every row of it, taken again until one does: a
 * transaction open anywhere on the server while a snapshot reads (an autovacuum's ANALYZE in any
 * database) moves its horizon back, and the next snapshot then compares the rows written after
 * it, as it must.
 */
async function settledSnapshot(tenant: string): Promise<void> {
  for (let i = 0; i < 10; i++) {
    const s = await takeSnapshot(sql, { tenantId: tenant });
    const [{ settled }] = await sql<{ settled: boolean }[]>`
      select coalesce(not exists (select from hz.items l where l.tenant_id = ${tenant}
        and age(l.xmin) <= pitr.head_horizon_age(st.store_id, ${tenant})), false) as settled
      from pitr.backup_snapshot_tables st
      where st.snapshot_id = ${s.snapshot_id} and st.table_name = 'items'`;
    if (settled) return;
  }
  throw new Error(`no snapshot of ${tenant} whose horizon follows its rows`);
}

dbTest(
  "a snapshot compares no row of a table unchanged since the last one, and every change since is stored",
  async () => {
    await seed("h10", 10000);
    await settledSnapshot("h10");
    const start = await rows("h10");
    const same = await snapshotCompared("h10");
    assert.equal(same.compared, false);
    // Fewer rows, none written since.
    await sql`delete from hz.items where tenant_id = 'h10' and id = 10001`;
    const deleted = await rows("h10");
    const fewer = await snapshotCompared("h10");
    assert.equal(fewer.compared, true);
    // As many rows as before, one of them new.
    await sql`delete from hz.items where tenant_id = 'h10' and id = 10002`;
    await sql`insert into hz.items values (10002, 'h10', 'back', 2, null)`;
    const swapped = await rows("h10");
    const renewed = await snapshotCompared("h10");
    assert.equal(renewed.compared, true);
    // Frozen since, and nothing else: unchanged.
    await settledSnapshot("h10");
    await sql`vacuum (freeze) hz.items`;
    const frozen = await snapshotCompared("h10");
    assert.equal(frozen.compared, false);
    for (
      const [id, want] of [[same.id, start], [fewer.id, deleted], [renewed.id, swapped]] as const
    ) {
      await sql`update hz.items set qty = -1 where tenant_id = 'h10'`;
      await restore(id, "h10");
      assert.deepEqual(await rows("h10"), want);
    }
    await restore(frozen.id, "h10");
    assert.deepEqual(await rows("h10"), swapped);
  },
);

dbTest(
  "a row written by a transaction open across a snapshot is stored by the next one",
  async () => {
    await seed("h11", 11000);
    const before = await rows("h11");
    const writer = await sql.reserve();
    try {
      await writer`begin`;
      await writer`update hz.items set name = 'open across' where tenant_id = 'h11' and id = 11001`;
      const first = await takeSnapshot(sql, { tenantId: "h11" });
      await writer`commit`;
      const after = await rows("h11");
      assert.notDeepEqual(after, before);
      const next = await snapshotCompared("h11");
      assert.equal(next.compared, true);
      await restore(first.snapshot_id, "h11");
      assert.deepEqual(await rows("h11"), before);
      await restore(next.id, "h11");
      assert.deepEqual(await rows("h11"), after);
    } finally {
      writer.release();
    }
  },
);

dbTest(
  "after a restore, whose undo moved the head, the next snapshot compares every row",
  async () => {
    await seed("h12", 12000);
    const s = await takeSnapshot(sql, { tenantId: "h12" });
    const before = await rows("h12");
    await sql`update hz.items set qty = 0 where tenant_id = 'h12' and id % 2 = 0`;
    await restore(s.snapshot_id, "h12");
    const next = await snapshotCompared("h12");
    assert.equal(next.compared, true);
    await sql`update hz.items set qty = 1 where tenant_id = 'h12'`;
    await restore(next.id, "h12");
    assert.deepEqual(await rows("h12"), before);
  },
);

cleanup(db);
