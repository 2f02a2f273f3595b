// Validate compares a snapshot with the live schema: what still fits restores, what would lose
// data or cannot be cast is refused with the table and column named, and nothing half-applies.
import assert from "node:assert/strict";
import { planRestore } from "../shared/restore/plan.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { validateSnapshot } from "../shared/restore/validate.ts";
import { Unprocessable } from "../shared/restore/errors.ts";
import { cleanup, dbTest, restoreSnapshot, storeOf, testDatabase } from "./_db.ts";

const db = await testDatabase("drift");
const sql = db.sql;

async function freshTable() {
  await sql`drop table if exists public.drift`;
  await sql`create table public.drift (id int primary key, tenant_id text not null, qty int, note text)`;
  await sql`insert into public.drift select i, 'd1', i * 10, format('note %s', i) from generate_series(1, 20) i`;
  await sql`insert into public.drift select i, 'd2', i, 'other' from generate_series(21, 25) i`;
}
async function rows(tenant: string) {
  return await sql`select * from public.drift where tenant_id = ${tenant} order by id`;
}
async function restore(snapshotId: string) {
  return await restoreSnapshot(sql, {
    snapshotId,
    tenantId: "d1",
    strategy: "overwrite",
    tables: ["drift"],
  });
}

dbTest(
  "a nullable or defaulted column added since restores, the new column left to its default",
  async () => {
    await freshTable();
    const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    const before = await rows("d1");
    await sql`delete from public.drift where tenant_id = 'd1' and id <= 5`;
    await sql`alter table public.drift add column extra text, add column flag boolean not null default true`;
    const v = await validateSnapshot(sql, snap.snapshot_id);
    assert.equal(v.valid, true, JSON.stringify(v.checks));
    const status = await restore(snap.snapshot_id);
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    const after = await rows("d1");
    assert.deepEqual(
      after.map((r) => [r.id, r.qty, r.note]),
      before.map((r) => [r.id, r.qty, r.note]),
    );
    assert.ok(after.every((r) => r.flag === true && r.extra === null));
  },
);

dbTest(
  "a NOT NULL column without default added since is refused, naming table and column",
  async () => {
    await freshTable();
    const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    await sql`alter table public.drift add column required int`;
    await sql`update public.drift set required = 1`;
    await sql`alter table public.drift alter column required set not null`;
    const v = await validateSnapshot(sql, snap.snapshot_id);
    assert.equal(v.valid, false);
    assert.match(v.checks.find((c) => !c.ok)!.message, /public\.drift\.required/);
    await assert.rejects(
      planRestore(sql, { snapshotId: snap.snapshot_id }),
      (e) => e instanceof Unprocessable,
    );
  },
);

dbTest(
  "a retyped column that casts without loss restores; one that loses data is refused",
  async () => {
    await freshTable();
    const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    await sql`alter table public.drift alter column qty type bigint`;
    const ok = await validateSnapshot(sql, snap.snapshot_id);
    assert.equal(ok.valid, true);
    await sql`update public.drift set qty = -1 where tenant_id = 'd1'`;
    assert.equal((await restore(snap.snapshot_id)).status, "completed");
    assert.deepEqual(
      (await rows("d1")).map((r) => Number(r.qty)),
      Array.from({ length: 20 }, (_, i) => (i + 1) * 10),
    );

    await sql`alter table public.drift alter column note type varchar(3) using left(note, 3)`;
    const lossy = await validateSnapshot(sql, snap.snapshot_id);
    assert.equal(lossy.valid, false);
    assert.match(
      lossy.checks.find((c) => !c.ok)!.message,
      /public\.drift\.note changed type .* values would change/,
    );

    await freshTable();
    const snap2 = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    await sql`alter table public.drift alter column note type int using null`;
    const uncastable = await validateSnapshot(sql, snap2.snapshot_id);
    assert.equal(uncastable.valid, false);
    assert.match(uncastable.checks.find((c) => !c.ok)!.message, /cannot be cast/);
    const d = await rows("d1");
    const status = await restore(snap2.snapshot_id);
    assert.equal(status.status, "failed");
    assert.equal(status.error?.code, "schema_incompatible");
    assert.deepEqual(await rows("d1"), d);
  },
);

dbTest("a dropped column holding values and a dropped table are refused by validate", async () => {
  await freshTable();
  const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
  await sql`alter table public.drift drop column note`;
  const v = await validateSnapshot(sql, snap.snapshot_id);
  assert.equal(v.valid, false);
  assert.match(
    v.checks.find((c) => !c.ok)!.message,
    /column public\.drift\.note was dropped .* 20 rows/,
  );
  await sql`drop table public.drift`;
  const gone = await validateSnapshot(sql, snap.snapshot_id);
  assert.equal(gone.valid, false);
  assert.equal(gone.checks.find((c) => !c.ok)!.check, "table_exists");
  await freshTable();
});

dbTest("other tenants' rows of the table are never touched by these restores", async () => {
  await freshTable();
  const other =
    await sql`select xmin::text, * from public.drift where tenant_id = 'd2' order by id`;
  const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
  await sql`delete from public.drift where tenant_id = 'd1'`;
  assert.equal((await restore(snap.snapshot_id)).status, "completed");
  assert.deepEqual(
    await sql`select xmin::text, * from public.drift where tenant_id = 'd2' order by id`,
    other,
  );
});

dbTest(
  "a column renamed since is restored into the column it became, and validate names the rename",
  async () => {
    await freshTable();
    const before = await rows("d1");
    const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    await sql`update public.drift set note = 'changed' where tenant_id = 'd1' and id <= 5`;
    await sql`alter table public.drift rename column note to memo`;
    const other = await sql`select xmin::text, * from public.drift where tenant_id = 'd2'`;
    const v = await validateSnapshot(sql, snap.snapshot_id);
    assert.equal(v.valid, true, JSON.stringify(v.checks));
    assert.ok(
      v.checks.some((c) =>
        c.ok && c.message.includes("column public.drift.note was renamed to memo")
      ),
      JSON.stringify(v.checks),
    );
    const status = await restore(snap.snapshot_id);
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    assert.deepEqual(
      (await rows("d1")).map((r) => [r.id, r.qty, r.memo]),
      before.map((r) => [r.id, r.qty, r.note]),
    );
    assert.deepEqual(
      await sql`select xmin::text, * from public.drift where tenant_id = 'd2'`,
      other,
    );
  },
);

dbTest(
  "a column that held only NULLs, written and renamed since, is restored to its NULLs",
  async () => {
    // Such a column used to be taken for one dropped (nothing lost) and the renamed one for one
    // added since, left as it was: a state that never existed (tests/exactness.test.ts, seed 4242).
    await freshTable();
    await sql`update public.drift set note = null where tenant_id = 'd1'`;
    const before = await rows("d1");
    const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    await sql`update public.drift set note = 'written since' where tenant_id = 'd1'`;
    await sql`alter table public.drift rename column note to memo`;
    const status = await restore(snap.snapshot_id);
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    assert.deepEqual(
      (await rows("d1")).map((r) => [r.id, r.qty, r.memo]),
      before.map((r) => [r.id, r.qty, r.note]),
    );
  },
);

dbTest(
  "two columns that swapped names keep their values: each is matched by identity, not by name",
  async () => {
    await sql`drop table if exists public.swapped`;
    await sql`create table public.swapped (id int primary key, tenant_id text not null,
      first_name text, last_name text)`;
    await sql`insert into public.swapped values (1, 'd1', 'Ada', 'Lovelace'),
      (2, 'd1', 'Alan', 'Turing')`;
    const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["swapped"] });
    // A migration that found the two the wrong way round.
    await sql`alter table public.swapped rename column first_name to tmp`;
    await sql`alter table public.swapped rename column last_name to first_name`;
    await sql`alter table public.swapped rename column tmp to last_name`;
    const now = await sql`select * from public.swapped order by id`;
    const plan = await planRestore(sql, { snapshotId: snap.snapshot_id });
    assert.deepEqual(plan.totals, { insert: 0, update: 0, delete: 0, unchanged: 2 });
    const status = await restoreSnapshot(sql, {
      snapshotId: snap.snapshot_id,
      tenantId: "d1",
      strategy: "overwrite",
    });
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    assert.deepEqual(await sql`select * from public.swapped order by id`, now);
    assert.deepEqual(now.map((r) => r.last_name), ["Ada", "Alan"]);
    await sql`drop table public.swapped`;
  },
);

dbTest(
  "a snapshot recorded without its columns' identity is refused where a rename cannot be told from a drop",
  async () => {
    await freshTable();
    await sql`update public.drift set note = null where tenant_id = 'd1'`;
    const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    // As a snapshot taken before 20261129001400 was recorded.
    await sql`update pitr.backup_snapshot_tables set relid = null, attnums = null
      where snapshot_id = ${snap.snapshot_id}`;
    await sql`update public.drift set note = 'written since' where tenant_id = 'd1'`;
    await sql`alter table public.drift rename column note to memo`;
    const v = await validateSnapshot(sql, snap.snapshot_id);
    assert.equal(v.valid, false);
    assert.match(v.checks.find((c) => !c.ok)!.message, /cannot be told from one dropped/);
    const d = await rows("d1");
    const status = await restore(snap.snapshot_id);
    assert.equal(status.status, "failed");
    assert.equal(status.error?.code, "schema_incompatible");
    assert.deepEqual(await rows("d1"), d);
    // A true drop of the column beside a column added is refused alike: the two look the same.
    await sql`alter table public.drift rename column memo to note`;
    await sql`alter table public.drift drop column note, add column memo text`;
    assert.equal((await validateSnapshot(sql, snap.snapshot_id)).valid, false);
  },
);

dbTest(
  "an older snapshot restores and verifies after a column was added since",
  async () => {
    // The undo goes to the store of today's columns; verification used to sum from the head of
    // the snapshot's store, left at the later snapshot, and failed every such restore.
    await freshTable();
    const before = await rows("d1");
    const older = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    await sql`update public.drift set qty = 0 where tenant_id = 'd1' and id = 2`;
    await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    await sql`alter table public.drift add column extra text`;
    await sql`update public.drift set extra = 'x', qty = -1 where tenant_id = 'd1' and id = 1`;
    const status = await restore(older.snapshot_id);
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    assert.deepEqual(
      (await rows("d1")).map((r) => [r.id, r.qty, r.note]),
      before.map((r) => [r.id, r.qty, r.note]),
    );
  },
);

dbTest(
  "the undo of a restore keeps the values of a column added since the snapshot",
  async () => {
    await freshTable();
    const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    await sql`alter table public.drift add column extra text`;
    await sql`insert into public.drift values (100, 'd1', 1, 'new', 'kept')`;
    await sql`update public.drift set extra = 'set since', qty = -1 where tenant_id = 'd1' and id = 1`;
    const before = await sql`select * from public.drift where tenant_id = 'd1' order by id`;
    const status = await restore(snap.snapshot_id);
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    assert.ok(status.undo_snapshot_id);
    assert.equal((await sql`select from public.drift where id = 100`).length, 0);
    const undone = await restore(status.undo_snapshot_id!);
    assert.equal(undone.status, "completed", JSON.stringify(undone.error));
    assert.deepEqual(
      await sql`select * from public.drift where tenant_id = 'd1' order by id`,
      before,
    );
    await sql`alter table public.drift drop column extra`;
  },
);

dbTest(
  "a new foreign key that snapshot rows would break: the restore is refused, naming it",
  async () => {
    await freshTable();
    const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    await sql`create table public.drift_kinds (qty int primary key)`;
    await sql`insert into public.drift_kinds select qty from public.drift where tenant_id = 'd1' and id > 10`;
    await sql`delete from public.drift where tenant_id = 'd1' and id <= 10`;
    await sql`alter table public.drift add constraint drift_qty_fk foreign key (qty) references public.drift_kinds (qty) not valid`;
    const d = await rows("d1");
    try {
      const status = await restore(snap.snapshot_id);
      assert.equal(status.status, "failed");
      // Refused as its plan refuses it: the missing parents are outside the restore.
      assert.equal(status.error?.code, "plan_blocked");
      assert.match(status.error!.message, /drift_qty_fk/);
      assert.deepEqual(await rows("d1"), d);
    } finally {
      await sql`alter table public.drift drop constraint drift_qty_fk`;
      await sql`drop table public.drift_kinds`;
    }
  },
);

dbTest(
  "a new unique index that snapshot rows would violate: the restore fails whole, naming it",
  async () => {
    await freshTable();
    await sql`update public.drift set qty = 7 where tenant_id = 'd1' and id in (1, 2)`;
    const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    await sql`delete from public.drift where tenant_id = 'd1' and id = 2`;
    await sql`create unique index drift_qty_unique on public.drift (tenant_id, qty)`;
    const d = await rows("d1");
    try {
      const status = await restore(snap.snapshot_id);
      assert.equal(status.status, "failed");
      assert.equal(status.error?.code, "key_conflict");
      assert.match(status.error!.message, /drift_qty_unique/);
      assert.deepEqual(await rows("d1"), d);
    } finally {
      await sql`drop index public.drift_qty_unique`;
    }
  },
);

dbTest(
  "a stored row altered behind the service's back is not written when a column changed type since: the restore, which compares the live rows with the store as it is, checks the recorded checksum too",
  async () => {
    await freshTable();
    const snap = await takeSnapshot(sql, { tenantId: "d1", tables: ["drift"] });
    const store = await storeOf(sql, snap.tables[0].id);
    await sql`update pitr_store.${sql(store.table)} set note = 'forged'
      where pitr_tenant = ${store.tenant} and id = 3`;
    await sql`alter table public.drift alter column qty type bigint`;
    await sql`update public.drift set note = 'live' where id = 3`;
    const before = await rows("d1");
    const status = await restore(snap.snapshot_id);
    assert.equal(status.status, "failed", JSON.stringify(status));
    assert.equal(status.error?.code, "snapshot_invalid");
    assert.deepEqual(await rows("d1"), before);
  },
);

cleanup(db);
