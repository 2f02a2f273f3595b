// Exactness where constraints are involved: a restore never commits a broken foreign key (keys
// that are not primary, parents deleted by other sessions meanwhile, MATCH FULL), restores any
// permutation of unique values, restores tables without a primary key as multisets, and keeps
// snapshots independent of the application's own types.
import assert from "node:assert/strict";
import { applySnapshot } from "../shared/restore/apply.ts";
import { type Plan, planRestore } from "../shared/restore/plan.ts";
import { inRolledBackTransaction } from "../shared/db/transaction.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { createRestore } from "../shared/restore/history.ts";
import { snapshotAt, validateAt } from "../shared/restore/point_in_time.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { validateSnapshot } from "../shared/restore/validate.ts";
import { cleanup, clearMoment, dbTest, restoreSnapshot, testDatabase } from "./_db.ts";

const db = await testDatabase("constraints");
const sql = db.sql;

await sql.unsafe(`
  create schema shop;
  create table shop.countries (code text primary key);
  insert into shop.countries values ('NL'), ('SA'), ('FR');
  create table shop.plans (id bigint primary key, tenant_id text not null, code text not null,
    unique (tenant_id, code));
  create table shop.subscriptions (id bigint primary key, tenant_id text not null,
    plan_code text not null, country text references shop.countries (code),
    foreign key (tenant_id, plan_code) references shop.plans (tenant_id, code) on update cascade);
  create table shop.members (id bigint primary key, tenant_id text not null, email text not null,
    badge int, unique (tenant_id, email), unique (badge));
  create table shop.visits (tenant_id text not null, path text, hits int);
  create type shop.level as enum ('low', 'mid', 'high');
  create domain shop.small_positive as int check (value > 0);
  create type shop.money_pair as (amount numeric, note text);
  create table shop.settings (id bigint primary key, tenant_id text not null, lvl shop.level,
    quota shop.small_positive, pair shop.money_pair, lvls shop.level[]);
  create table shop.refs (id bigint primary key, tenant_id text not null, a int, b int);
  create table shop.ref_targets (a int, b int, tenant_id text not null, primary key (a, b));
  create table shop.prices (amount numeric primary key, tenant_id text not null, note text);
  create table shop.tickets (id text primary key, tenant_id text not null,
    num bigint generated always as identity);
  insert into pitr.backup_protected_tables (table_schema, table_name)
  select 'shop', t from unnest(array['plans', 'subscriptions', 'members', 'visits', 'settings',
    'refs', 'ref_targets', 'tickets', 'prices']) t;
`);

async function restore(snapshotId: string, tenant: string, tables?: string[]) {
  return await restoreSnapshot(sql, {
    snapshotId,
    tenantId: tenant,
    strategy: "overwrite",
    tables,
  });
}

/** A table's rows of a tenant as sorted text (a multiset), the way a person would compare them. */
async function rows(table: string, tenant: string): Promise<string[]> {
  const r = await sql<{ t: string }[]>`
    select x::text as t from ${sql(table)} x where tenant_id = ${tenant} order by 1`;
  return r.map((x) => x.t);
}

dbTest(
  "a restore of a parent whose referenced unique key changed since is refused, naming the constraint; with the child it restores",
  async () => {
    await sql`insert into shop.plans values (1, 't1', 'basic'), (2, 't1', 'pro')`;
    await sql`insert into shop.subscriptions values (10, 't1', 'basic', 'NL'), (11, 't1', 'pro', 'SA')`;
    const tables = ["shop.plans", "shop.subscriptions"];
    const s = await takeSnapshot(sql, { tenantId: "t1", tables });
    const before = [await rows("shop.plans", "t1"), await rows("shop.subscriptions", "t1")];
    // The rename cascades to the subscriptions.
    await sql`update shop.plans set code = 'starter' where id = 1`;
    const renamed = [await rows("shop.plans", "t1"), await rows("shop.subscriptions", "t1")];

    const plan = await planRestore(sql, { snapshotId: s.snapshot_id, tables: ["shop.plans"] });
    assert.ok(plan.warnings.some((w) => w.blocking && w.code === "cascade_outside_set"));
    const refused = await restore(s.snapshot_id, "t1", ["shop.plans"]);
    assert.equal(refused.status, "failed");
    assert.match(refused.error!.code, /plan_blocked|foreign_key_violation/);
    assert.deepEqual(
      [await rows("shop.plans", "t1"), await rows("shop.subscriptions", "t1")],
      renamed,
    );

    // applySnapshot itself (what execute and drills run) refuses it at its plan.
    await assert.rejects(
      sql.begin((tx) =>
        applySnapshot(tx, s.snapshot_id, { strategy: "overwrite", tables: ["shop.plans"] })
      ),
      (e: Error & { code?: string }) => e.code === "plan_blocked",
    );

    const whole = await restore(s.snapshot_id, "t1", tables);
    assert.equal(whole.status, "completed", JSON.stringify(whole.error));
    assert.deepEqual(
      [await rows("shop.plans", "t1"), await rows("shop.subscriptions", "t1")],
      before,
    );
  },
);

dbTest(
  "a child added by another session after the plan, pointing at a key the restore takes away, is caught before commit",
  async () => {
    await sql`insert into shop.plans values (3, 't2', 'gold')`;
    const s = await takeSnapshot(sql, { tenantId: "t2", tables: ["shop.plans"] });
    await sql`update shop.plans set code = 'platinum' where id = 3`;
    // The plan sees no child of 'platinum'; one is committed right after it.
    const failure = await sql.begin((tx) =>
      applySnapshot(tx, s.snapshot_id, {
        strategy: "overwrite",
        onPlan: async () => {
          await sql`insert into shop.subscriptions values (30, 't2', 'platinum', null)`;
        },
      })
    ).then(() => undefined, (e: Error & { code?: string }) => e);
    // Refused as the plan, run again now, would refuse it: the key across the edge of this
    // partial restore is checked after the writes, from the rows it deleted.
    assert.equal(failure?.code, "plan_blocked");
    assert.match(
      failure!.message,
      /would orphan 1 rows of shop\.subscriptions \(subscriptions_tenant_id_plan_code_fkey\); shop\.subscriptions is not in the snapshot/,
    );
    assert.deepEqual(await rows("shop.plans", "t2"), ["(3,t2,platinum)"]);
    assert.deepEqual(await rows("shop.subscriptions", "t2"), ["(30,t2,platinum,)"]);
  },
);

dbTest(
  "a parent outside the restore is locked FOR KEY SHARE: another session cannot delete it before commit",
  async () => {
    await sql`insert into shop.plans values (4, 't3', 'basic')`;
    await sql`insert into shop.subscriptions values (40, 't3', 'basic', 'FR')`;
    const s = await takeSnapshot(sql, {
      tenantId: "t3",
      tables: ["shop.plans", "shop.subscriptions"],
    });
    await sql`delete from shop.subscriptions where tenant_id = 't3'`;
    const other = await sql.reserve();
    try {
      await sql.begin(async (tx) => {
        await applySnapshot(tx, s.snapshot_id, { strategy: "overwrite", drill: true });
        // The restore's transaction is still open: the country its restored row points at is
        // locked, so another session's delete of it waits (and would fail after commit).
        await other`set lock_timeout = '300ms'`;
        await assert.rejects(
          other`delete from shop.countries where code = 'FR'`,
          (e: Error & { code?: string }) => e.code === "55P03",
        );
      });
      assert.deepEqual(await rows("shop.subscriptions", "t3"), ["(40,t3,basic,FR)"]);
      await assert.rejects(other`delete from shop.countries where code = 'FR'`, /foreign key/);
    } finally {
      other.release();
    }
  },
);

dbTest("swapped, rotated and moved unique values restore in one transaction", async () => {
  await sql`insert into shop.members values
    (1, 'u', 'a@x', 1), (2, 'u', 'b@x', 2), (3, 'u', 'c@x', 3), (4, 'u', 'd@x', 4)`;
  const s = await takeSnapshot(sql, { tenantId: "u", tables: ["shop.members"] });
  const before = await rows("shop.members", "u");
  // A swap of emails, a rotation of badges, and a key moved from one row to another.
  await sql.begin(async (tx) => {
    await tx`update shop.members set email = 'tmp' where id = 1`;
    await tx`update shop.members set email = 'a@x' where id = 2`;
    await tx`update shop.members set email = 'b@x' where id = 1`;
    await tx`update shop.members set badge = badge + 10`;
    await tx`update shop.members set badge = case id when 1 then 2 when 2 then 3 when 3 then 1 else 4 end`;
    await tx`update shop.members set email = 'e@x' where id = 3`;
    await tx`update shop.members set email = 'c@x' where id = 4`;
  });
  assert.notDeepEqual(await rows("shop.members", "u"), before);
  const status = await restore(s.snapshot_id, "u");
  assert.equal(status.status, "completed", JSON.stringify(status.error));
  assert.deepEqual(await rows("shop.members", "u"), before);
  const again = await planRestore(sql, { snapshotId: s.snapshot_id });
  assert.equal(again.totals.update + again.totals.insert + again.totals.delete, 0);
});

dbTest(
  "exclusion constraints: swapped ranges restore; one overlapping another tenant's row is refused as key_conflict naming the constraint, nothing changed",
  async () => {
    // Found by tests/exactness.test.ts: the overlap came back as an internal error (a 500).
    await sql.unsafe(`create table shop.bookings (id bigint primary key, tenant_id text not null,
      span int4range, exclude using gist (span with &&));
      insert into pitr.backup_protected_tables (table_schema, table_name)
        values ('shop', 'bookings')`);
    await sql`insert into shop.bookings values (1, 'b', '[1,5)'), (2, 'b', '[5,9)'),
      (3, 'c', '[20,30)')`;
    const s = await takeSnapshot(sql, { tenantId: "b", tables: ["shop.bookings"] });
    const before = await rows("shop.bookings", "b");
    await sql.begin(async (tx) => {
      await tx`update shop.bookings set span = 'empty' where id = 1`;
      await tx`update shop.bookings set span = '[1,5)' where id = 2`;
      await tx`update shop.bookings set span = '[5,9)' where id = 1`;
    });
    const swapped = await restore(s.snapshot_id, "b", ["shop.bookings"]);
    assert.equal(swapped.status, "completed", JSON.stringify(swapped.error));
    assert.deepEqual(await rows("shop.bookings", "b"), before);

    await sql`delete from shop.bookings where id = 1`;
    await sql`insert into shop.bookings values (4, 'c', '[2,3)')`;
    const mine = await rows("shop.bookings", "b");
    const theirs =
      await sql`select xmin::text, ctid::text from shop.bookings where tenant_id = 'c'`;
    const refused = await restore(s.snapshot_id, "b", ["shop.bookings"]);
    assert.equal(refused.status, "failed");
    assert.equal(refused.error!.code, "key_conflict");
    assert.match(refused.error!.message, /exclusion constraint bookings_span_excl/);
    assert.deepEqual(await rows("shop.bookings", "b"), mine);
    assert.deepEqual(
      await sql`select xmin::text, ctid::text from shop.bookings where tenant_id = 'c'`,
      theirs,
    );
  },
);

dbTest(
  "a table without a primary key is snapshotted and restored exactly, as a multiset",
  async () => {
    await sql`insert into shop.visits values ('v', '/a', 1), ('v', '/a', 1), ('v', '/b', null),
    ('w', '/a', 1)`;
    const s = await takeSnapshot(sql, { tenantId: "v" });
    assert.ok(s.tables.some((t) => t.name === "shop.visits" && t.rows === 3));
    const before = await rows("shop.visits", "v");
    const other = await sql`select xmin::text, ctid::text from shop.visits where tenant_id = 'w'`;
    await sql`delete from shop.visits where tenant_id = 'v' and path = '/b'`;
    await sql`update shop.visits set hits = 2 where ctid = (select min(ctid) from shop.visits
    where tenant_id = 'v' and path = '/a')`;
    await sql`insert into shop.visits values ('v', '/c', 5), ('v', '/c', 5)`;
    const plan = await planRestore(sql, { snapshotId: s.snapshot_id, tables: ["shop.visits"] });
    const counts = plan.tables.find((t) => t.table === "shop.visits")!;
    assert.deepEqual([counts.insert, counts.delete, counts.update], [2, 3, 0]);

    const status = await restore(s.snapshot_id, "v", ["shop.visits"]);
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    assert.deepEqual(await rows("shop.visits", "v"), before);
    assert.deepEqual(
      await sql`select xmin::text, ctid::text from shop.visits where tenant_id = 'w'`,
      other,
    );
    // Unchanged since, a second snapshot stores nothing new; the undo snapshot restores the damage.
    const [{ store }] = await sql<{ store: string }[]>`
    select 'pitr_store.' || store_table as store from pitr.backup_snapshot_tables
    where id = ${s.tables.find((t) => t.name === "shop.visits")!.id}`;
    const versions = async () =>
      (await sql<{ n: string }[]>`select count(*) as n from ${sql(store)} where pitr_tenant = 'v'`)[
        0
      ]
        .n;
    await takeSnapshot(sql, { tenantId: "v", tables: ["shop.visits"] });
    const stored = await versions();
    await takeSnapshot(sql, { tenantId: "v", tables: ["shop.visits"] });
    assert.equal(await versions(), stored);
    const undo = await restore(status.undo_snapshot_id!, "v", ["shop.visits"]);
    assert.equal(undo.status, "completed");
    assert.equal((await rows("shop.visits", "v")).filter((r) => r.includes("/c")).length, 2);
  },
);

dbTest(
  "a MATCH FULL key written half null is refused before commit, naming the constraint",
  async () => {
    await sql`insert into shop.ref_targets values (1, 1, 'm')`;
    await sql`insert into shop.refs values (1, 'm', 1, null), (2, 'm', 1, 1)`;
    const s = await takeSnapshot(sql, { tenantId: "m", tables: ["shop.refs"] });
    await sql`delete from shop.refs where tenant_id = 'm'`;
    await sql`alter table shop.refs add constraint refs_full foreign key (a, b)
      references shop.ref_targets (a, b) match full not valid`;
    try {
      const status = await restore(s.snapshot_id, "m", ["shop.refs"]);
      assert.equal(status.status, "failed");
      assert.equal(status.error!.code, "foreign_key_violation");
      assert.match(status.error!.message, /refs_full/);
      assert.deepEqual(await rows("shop.refs", "m"), []);
    } finally {
      await sql`alter table shop.refs drop constraint refs_full`;
    }
  },
);

dbTest(
  "stores keep no dependency on the application's types: its DROP TYPE and ALTER DOMAIN run as without pitr",
  async () => {
    await sql`insert into shop.settings values
      (1, 's', 'mid', 5, row(1.50, 'a "quoted" note')::shop.money_pair, '{low,high}'),
      (2, 's', null, null, null, '[0:1]={mid,mid}')`;
    const s = await takeSnapshot(sql, { tenantId: "s", tables: ["shop.settings"] });
    const before = await rows("shop.settings", "s");
    const depends = await sql`
      select d.refobjid::regtype::text as type from pg_depend d
      join pg_class c on c.oid = d.objid and d.classid = 'pg_class'::regclass
      where c.relnamespace = 'pitr_store'::regnamespace and d.refclassid = 'pg_type'::regclass
        and d.refobjid in ('shop.level'::regtype, 'shop.small_positive'::regtype,
          'shop.money_pair'::regtype, 'shop.level[]'::regtype)`;
    assert.deepEqual([...depends], []);

    await sql`update shop.settings set lvl = 'high', quota = 7, pair = null, lvls = null
      where tenant_id = 's'`;
    const status = await restore(s.snapshot_id, "s", ["shop.settings"]);
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    assert.deepEqual(await rows("shop.settings", "s"), before);

    // The application's own migrations: a stricter domain (the snapshot's 5 is no longer
    // accepted), then a value renamed. Both succeed as they would without pitr.
    await sql`update shop.settings set quota = 20 where tenant_id = 's' and quota is not null`;
    await sql`alter domain shop.small_positive add constraint at_least_ten check (value >= 10)`;
    await sql`alter type shop.level rename value 'mid' to 'medium'`;
    const v = await validateSnapshot(sql, s.snapshot_id);
    assert.equal(v.valid, false);
    const bad = v.checks.filter((c) => !c.ok && c.severity === "error").map((c) => c.message);
    assert.ok(bad.some((m) => /lvl/.test(m)), JSON.stringify(bad));
    assert.ok(bad.some((m) => /quota/.test(m)), JSON.stringify(bad));
    // And the type can go once the column does.
    await sql`alter table shop.settings drop column lvl, drop column lvls`;
    await sql`drop type shop.level`;
  },
);

dbTest(
  "concurrent first snapshots of a new table create its store once, without errors",
  async () => {
    await sql`create table shop.fresh (id int primary key, tenant_id text not null)`;
    await sql`insert into pitr.backup_protected_tables (table_schema, table_name) values ('shop', 'fresh')`;
    await sql`insert into shop.fresh select i, 'f' || (i % 8) from generate_series(1, 80) i`;
    const snapshots = await Promise.all(
      Array.from(
        { length: 8 },
        (_, i) => takeSnapshot(sql, { tenantId: `f${i}`, tables: ["shop.fresh"] }),
      ),
    );
    assert.ok(snapshots.every((s) => s.tables[0].rows === 10));
    const [{ n }] = await sql<{ n: string }[]>`
    select count(*) as n from pitr.backup_stores where table_schema = 'shop' and table_name = 'fresh'`;
    assert.equal(Number(n), 1);
  },
);

dbTest(
  "a foreign key added while a restore runs is never left unchecked: the restore is refused, naming it, rows unchanged; run again, it is checked",
  async () => {
    // ADD FOREIGN KEY takes SHARE ROW EXCLUSIVE, which the restore's reads do not conflict with:
    // an application's migration can add one after the restore read the FK graph and before it
    // writes, with the triggers that would check it off for the restore.
    await sql.unsafe(`
      create table shop.kinds (id int primary key, tenant_id text not null);
      create table shop.items (id bigint primary key, tenant_id text not null, kind int);
      insert into pitr.backup_protected_tables (table_schema, table_name)
        values ('shop', 'kinds'), ('shop', 'items');
      insert into shop.kinds values (1, 'k'), (2, 'k');
      insert into shop.items values (1, 'k', 1), (2, 'k', 99);`);
    const tables = ["shop.kinds", "shop.items"];
    const s = await takeSnapshot(sql, { tenantId: "k", tables });
    await sql`update shop.items set kind = 2 where id = 2`;
    const before = await rows("shop.items", "k");
    const { id } = await createRestore(sql, {
      snapshotId: s.snapshot_id,
      tenantId: "k",
      strategy: "overwrite",
      tables,
    });
    let added = false;
    try {
      const status = await executeRestore(sql, id, {
        onPhase: async (phase) => {
          if (phase !== "writes") return;
          // Valid for the rows committed now: the restore's item of kind 99 is not written yet.
          await sql`alter table shop.items add constraint items_kind_fk foreign key (kind)
            references shop.kinds (id)`;
          added = true;
        },
      });
      assert.ok(added, "the foreign key was added while the restore ran");
      assert.equal(status.status, "failed", JSON.stringify(status));
      assert.equal(status.error!.code, "concurrent_change");
      assert.match(status.error!.message, /items_kind_fk .*was added while the restore ran/);
      assert.deepEqual(await rows("shop.items", "k"), before);
      const [{ n }] = await sql<{ n: string }[]>`select count(*) as n from shop.items i
        where i.kind is not null and not exists (select from shop.kinds k where k.id = i.kind)`;
      assert.equal(Number(n), 0, "no item references a kind that is missing");
      // Run again, the plan knows the key: the item of kind 99 is refused by its check.
      const again = await restore(s.snapshot_id, "k", tables);
      assert.equal(again.status, "failed", JSON.stringify(again));
      assert.equal(again.error!.code, "foreign_key_violation");
      assert.match(again.error!.message, /items_kind_fk/);
      assert.deepEqual(await rows("shop.items", "k"), before);
    } finally {
      await sql`alter table shop.items drop constraint if exists items_kind_fk`;
    }
  },
);

dbTest(
  "deferrable unique, primary and exclusion keys, which PostgreSQL checks by a trigger that a restore turns off, are checked before commit: a collision is refused as key_conflict, rows unchanged",
  async () => {
    await sql.unsafe(`
      create table shop.slots (id bigint, tenant_id text not null, pos int, code text,
        span int4range,
        constraint slots_pk primary key (id) deferrable,
        constraint slots_pos unique (tenant_id, pos) deferrable initially deferred,
        constraint slots_code unique (code) deferrable,
        constraint slots_span exclude using gist (span with &&) where (pos > 0) deferrable);
      insert into pitr.backup_protected_tables (table_schema, table_name) values ('shop', 'slots');
      insert into shop.slots values (1, 'p', 1, 'A', '[1,5)'), (2, 'p', 2, 'B', '[5,9)');`);
    const s = await takeSnapshot(sql, { tenantId: "p", tables: ["shop.slots"] });
    const good = await rows("shop.slots", "p");
    const refused = async (strategy: "overwrite" | "merge", constraint: string) => {
      const before = await rows("shop.slots", "p");
      const status = await restoreSnapshot(sql, {
        snapshotId: s.snapshot_id,
        tenantId: "p",
        strategy,
        tables: ["shop.slots"],
      });
      assert.equal(status.status, "failed", JSON.stringify(status));
      assert.equal(status.error!.code, "key_conflict");
      assert.match(status.error!.message, new RegExp(constraint));
      assert.deepEqual(await rows("shop.slots", "p"), before);
    };
    // Another tenant took the code A since.
    await sql`update shop.slots set code = 'Z' where id = 1`;
    await sql`insert into shop.slots values (3, 'q', 1, 'A', null)`;
    await refused("overwrite", "slots_code");
    await sql`delete from shop.slots where id = 3`;
    // Another tenant took the id 2 (a key a restore of p's row 2 must write).
    await sql`delete from shop.slots where id = 2`;
    await sql`insert into shop.slots values (2, 'q', 7, 'Q', null)`;
    await refused("overwrite", "slots_pk");
    await sql`delete from shop.slots where id = 2`;
    // p's own row 4 took position 2; a merge adds back row 2 at position 2 beside it.
    await sql`insert into shop.slots values (4, 'p', 2, 'D', null)`;
    await refused("merge", "slots_pos");
    await sql`delete from shop.slots where id = 4`;
    // Another tenant's span overlaps row 2's; where its pos is not > 0 the exclusion binds nothing.
    await sql`insert into shop.slots values (5, 'q', 3, 'E', '[6,7)')`;
    await refused("overwrite", "slots_span");
    await sql`update shop.slots set pos = 0 where id = 5`;
    const status = await restore(s.snapshot_id, "p", ["shop.slots"]);
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    assert.deepEqual(await rows("shop.slots", "p"), good);

    // NULLS NOT DISTINCT: a null collides with another tenant's null.
    await sql.unsafe(`
      create table shop.tags (id bigint primary key, tenant_id text not null, label text,
        constraint tags_label unique nulls not distinct (label) deferrable);
      insert into pitr.backup_protected_tables (table_schema, table_name) values ('shop', 'tags');
      insert into shop.tags values (1, 'p', null);`);
    const t = await takeSnapshot(sql, { tenantId: "p", tables: ["shop.tags"] });
    await sql`update shop.tags set label = 'x' where id = 1`;
    await sql`insert into shop.tags values (2, 'q', null)`;
    const tags = await restoreSnapshot(sql, {
      snapshotId: t.snapshot_id,
      tenantId: "p",
      strategy: "overwrite",
      tables: ["shop.tags"],
    });
    assert.equal(tags.status, "failed", JSON.stringify(tags));
    assert.equal(tags.error!.code, "key_conflict");
    assert.match(tags.error!.message, /tags_label/);
    assert.deepEqual(await rows("shop.tags", "p"), ["(1,p,x)"]);

    // An exclusion on an expression, with a predicate, over columns whose names need quoting, and
    // a key of two columns: each looked up through its own index with its own operators.
    await sql.unsafe(`
      create table shop.stays (id bigint primary key, tenant_id text not null,
        "Room No" int not null, "From" int not null, "To" int not null,
        constraint stays_no_overlap exclude using gist
          (int4range("From", "To") with &&) where ("Room No" > 0) deferrable initially deferred,
        constraint stays_room unique ("Room No", "From") deferrable);
      insert into pitr.backup_protected_tables (table_schema, table_name)
        values ('shop', 'stays');
      insert into shop.stays values (1, 'p', 1, 10, 20);`);
    const b = await takeSnapshot(sql, { tenantId: "p", tables: ["shop.stays"] });
    const restoreStays = () =>
      restoreSnapshot(sql, {
        snapshotId: b.snapshot_id,
        tenantId: "p",
        strategy: "overwrite",
        tables: ["shop.stays"],
      });
    await sql`update shop.stays set "From" = 30, "To" = 40 where id = 1`;
    const moved = await rows("shop.stays", "p");
    await sql`insert into shop.stays values (2, 'q', 2, 15, 25)`;
    const overlap = await restoreStays();
    assert.equal(overlap.error?.code, "key_conflict", JSON.stringify(overlap));
    assert.match(overlap.error!.message, /stays_no_overlap/);
    // The same room and start, with an empty range that overlaps nothing.
    await sql`update shop.stays set "Room No" = 1, "From" = 10, "To" = 10 where id = 2`;
    const sameStart = await restoreStays();
    assert.equal(sameStart.error?.code, "key_conflict", JSON.stringify(sameStart));
    assert.match(sameStart.error!.message, /stays_room/);
    assert.deepEqual(await rows("shop.stays", "p"), moved);
    // Overlapping where the predicate does not hold binds nothing.
    await sql`update shop.stays set "Room No" = -1, "From" = 12, "To" = 18 where id = 2`;
    const done = await restoreStays();
    assert.equal(done.status, "completed", JSON.stringify(done.error));
    assert.deepEqual(await rows("shop.stays", "p"), ["(1,p,1,10,20)"]);
  },
);

dbTest(
  "a plan foresees collisions on unique and exclusion keys other than the primary key (an expression index, a partial one, NULLS NOT DISTINCT, deferrable, a merge beside the tenant's own row) as blocking key_conflict warnings naming the key, and the restore it previews fails on that key; no warning where nothing collides",
  async () => {
    await sql.unsafe(`
      create table shop.people (id bigint primary key, tenant_id text not null, email text,
        handle text, active boolean not null default true, badge text, seat int4range,
        constraint people_handle unique (handle) deferrable,
        constraint people_badge unique nulls not distinct (badge),
        constraint people_seat exclude using gist (seat with &&) where (active));
      create unique index people_email_lower on shop.people (lower(email)) where (active);
      insert into pitr.backup_protected_tables (table_schema, table_name)
        values ('shop', 'people');
      insert into shop.people values
        (1, 'k', 'Ann@example.com', 'ann', true, 'B1', '[1,5)'),
        (2, 'k', 'bob@example.com', 'bob', true, null, '[5,9)'),
        (3, 'm', 'cy@example.com', 'cy', true, 'C1', '[20,30)');`);
    const s = await takeSnapshot(sql, { tenantId: "k", tables: ["shop.people"] });
    const plan = async (strategy: "overwrite" | "merge" = "overwrite") => {
      const before = await sql`select xmin::text, ctid::text, * from shop.people order by id`;
      const p = await planRestore(sql, {
        snapshotId: s.snapshot_id,
        tables: ["shop.people"],
        strategy,
      });
      assert.deepEqual(
        await sql`select xmin::text, ctid::text, * from shop.people order by id`,
        before,
        "a plan changes nothing",
      );
      return p.warnings.filter((w) => w.code === "key_conflict").map((w) => {
        assert.equal(w.blocking, true);
        assert.equal(w.table, "shop.people");
        return w.message;
      });
    };
    const restore = (strategy: "overwrite" | "merge" = "overwrite") =>
      restoreSnapshot(sql, {
        snapshotId: s.snapshot_id,
        tenantId: "k",
        strategy,
        tables: ["shop.people"],
      });
    const refusedOn = async (key: string, strategy: "overwrite" | "merge" = "overwrite") => {
      const before = await rows("shop.people", "k");
      const warnings = await plan(strategy);
      assert.equal(warnings.length, 1, JSON.stringify(warnings));
      assert.match(
        warnings[0],
        new RegExp(`^1 snapshot rows of shop.people collide on key ${key}`),
      );
      const status = await restore(strategy);
      assert.equal(status.status, "failed", JSON.stringify(status));
      assert.equal(status.error!.code, "key_conflict");
      assert.match(status.error!.message, new RegExp(key));
      assert.deepEqual(await rows("shop.people", "k"), before);
    };
    // Unchanged, and other tenants' values all different: nothing to foresee.
    assert.deepEqual(await plan(), []);
    assert.deepEqual(await plan("merge"), []);

    // k's row 1 is deleted; m takes its email in another case, under the expression index.
    await sql`delete from shop.people where id = 1`;
    await sql`insert into shop.people values (4, 'm', 'ANN@example.com', 'x4', true, 'X4', null)`;
    await refusedOn("people_email_lower");
    // Where the partial index's predicate does not hold for m's row, nothing collides.
    await sql`update shop.people set active = false where id = 4`;
    assert.deepEqual(await plan(), []);
    await sql`delete from shop.people where id = 4`;

    // The deferrable handle, and a null badge under NULLS NOT DISTINCT.
    await sql`insert into shop.people values (5, 'm', null, 'ann', false, 'Z', null)`;
    await refusedOn("people_handle");
    await sql`update shop.people set handle = 'x5' where id = 5`;
    await sql`update shop.people set badge = 'B2' where id = 2`;
    await sql`update shop.people set badge = null where id = 5`;
    await refusedOn("people_badge");
    await sql`delete from shop.people where id = 5`;

    // An overlapping seat of m's, active.
    await sql`insert into shop.people values (6, 'm', null, 'x6', true, 'X6', '[3,4)')`;
    await refusedOn("people_seat");
    await sql`delete from shop.people where id = 6`;

    // k's own row 7 took row 1's handle: a merge adds row 1 back beside it and collides; an
    // overwrite replaces row 7 and goes through.
    await sql`insert into shop.people values (7, 'k', null, 'ann', true, null, null)`;
    await refusedOn("people_handle", "merge");
    assert.deepEqual(await plan(), []);
    const done = await restore();
    assert.equal(done.status, "completed", JSON.stringify(done.error));
    assert.deepEqual(await plan(), []);

    // A key over a column added since the snapshot is not foreseen: its values are not known
    // until written.
    await sql.unsafe(`alter table shop.people add column nick text default 'same';
      create unique index people_nick on shop.people (nick, handle);`);
    await sql`delete from shop.people where id = 1`;
    assert.deepEqual(await plan(), []);
    const again = await restore();
    assert.equal(again.status, "completed", JSON.stringify(again.error));
  },
);

dbTest(
  "validate checks the snapshot's rows against today's NOT NULL and CHECK constraints: a column made NOT NULL or a CHECK added since, which the restore would refuse, is an error naming it with a count; NOT VALID checks and checks over columns added since are left to the restore",
  async () => {
    await sql.unsafe(`
      create table shop.notes (id bigint primary key, tenant_id text not null, body text,
        score int);
      insert into pitr.backup_protected_tables (table_schema, table_name) values ('shop', 'notes');
      insert into shop.notes values (1, 'n', null, 5), (2, 'n', 'b', -1), (3, 'o', null, 1);`);
    const s = await takeSnapshot(sql, { tenantId: "n", tables: ["shop.notes"] });
    const checks = async () =>
      (await validateSnapshot(sql, s.snapshot_id)).checks.filter((c) => c.check === "constraints");
    const fits = await checks();
    assert.equal(fits.length, 1);
    assert.equal(fits[0].ok, true);
    assert.match(fits[0].message, /meet its NOT NULL and CHECK constraints \(2\)/);

    // The application backfills and tightens: body NOT NULL, score positive.
    await sql.unsafe(`update shop.notes set body = '' where body is null;
      update shop.notes set score = 1 where score < 0;
      alter table shop.notes alter column body set not null;
      alter table shop.notes add constraint notes_score_positive check (score > 0);`);
    const broken = await checks();
    assert.deepEqual(broken.map((c) => [c.ok, c.severity, c.message]), [
      [false, "error", "column shop.notes.body is NOT NULL now; 1 snapshot rows break it"],
      [
        false,
        "error",
        "check constraint notes_score_positive of shop.notes; 1 snapshot rows break it",
      ],
    ]);
    const v = await validateSnapshot(sql, s.snapshot_id);
    assert.equal(v.valid, false);
    // What validate foresaw is what the restore refuses, with nothing changed.
    const before = await rows("shop.notes", "n");
    const status = await restore(s.snapshot_id, "n", ["shop.notes"]);
    assert.equal(status.status, "failed");
    assert.ok(
      ["schema_incompatible", "constraint_violation"].includes(status.error!.code),
      JSON.stringify(status.error),
    );
    assert.deepEqual(await rows("shop.notes", "n"), before);

    // A CHECK added NOT VALID binds only the rows written, and one over a column added since has
    // no snapshot value to test: neither is reported.
    await sql.unsafe(`alter table shop.notes alter column body drop not null;
      alter table shop.notes drop constraint notes_score_positive;
      alter table shop.notes add constraint notes_score_small check (score < 3) not valid;
      alter table shop.notes add column rank int default 0 check (rank >= 0);`);
    const left = await checks();
    assert.deepEqual(left.map((c) => c.ok), [true]);
    assert.match(left[0].message, /\(2\)/); // id and tenant_id NOT NULL, as at first
  },
);

dbTest(
  "validate checks the snapshot's rows against today's unique keys: a key added since that two snapshot rows share a value of, which the restore would refuse, is an error naming it with counts; a key's predicate and nulls are honoured, and keys over columns added since are left to the restore",
  async () => {
    await sql.unsafe(`
      create table shop.handles (id bigint primary key, tenant_id text not null, handle text,
        nick text);
      insert into pitr.backup_protected_tables (table_schema, table_name)
        values ('shop', 'handles');
      insert into shop.handles values (1, 'h', 'Ann', 'x'), (2, 'h', 'ann', null),
        (3, 'h', 'bob', null), (4, 'h', 'BOB', null), (5, 'h', 'cy', 'x'), (6, 'g', 'ann', 'y');`);
    const s = await takeSnapshot(sql, { tenantId: "h", tables: ["shop.handles"] });
    const checks = async () =>
      (await validateSnapshot(sql, s.snapshot_id)).checks.filter((c) => c.check === "keys");
    const fits = await checks();
    assert.deepEqual(fits.map((c) => c.ok), [true]);
    assert.match(fits[0].message, /share a value of its unique keys \(1\)/);

    // The application deduplicates handles, case aside, and makes them unique per tenant; nicks
    // other than 'x' become unique too, and a code column is added with a unique key.
    await sql.unsafe(`update shop.handles set handle = handle || id where id in (2, 4);
      create unique index handles_handle on shop.handles (tenant_id, lower(handle));
      create unique index handles_nick on shop.handles (nick) where (nick <> 'x');
      alter table shop.handles add column code text;
      create unique index handles_code on shop.handles (code);`);
    const broken = await checks();
    assert.deepEqual(broken.map((c) => [c.ok, c.severity, c.message]), [
      [
        false,
        "error",
        "key handles_handle of shop.handles: 4 snapshot rows share 2 values of it; the restore " +
        "would be refused",
      ],
    ]);
    assert.equal((await validateSnapshot(sql, s.snapshot_id)).valid, false);
    // What validate foresaw is what the restore refuses, with nothing changed.
    const before = await rows("shop.handles", "h");
    const status = await restore(s.snapshot_id, "h", ["shop.handles"]);
    assert.equal(status.status, "failed");
    assert.equal(status.error!.code, "key_conflict", JSON.stringify(status.error));
    assert.deepEqual(await rows("shop.handles", "h"), before);

    // Without that key the snapshot fits again: the nick key's predicate leaves out the two
    // rows of 'x', nulls are distinct, and the key over the code added since is not checked.
    await sql`drop index shop.handles_handle`;
    const left = await checks();
    assert.deepEqual(left.map((c) => c.ok), [true]);
    assert.match(left[0].message, /\(2\)/);
  },
);

dbTest(
  "validate of a moment checks its rows against today's constraints and keys: a NOT NULL and a unique key added since, which leave the change log whole and the restore refused, are errors; a moment after the cleanup fits; nothing is kept",
  async () => {
    await sql.unsafe(`
      create table shop.labels (id bigint primary key, tenant_id text not null, label text);
      insert into pitr.backup_protected_tables (table_schema, table_name)
        values ('shop', 'labels');
      select pitr.capture_enable('shop.labels');
      insert into shop.labels values (1, 'L', 'a'), (2, 'L', 'A'), (3, 'L', null);`);
    const at = await clearMoment(sql);
    // The application cleans its labels up, then tightens them: no schema change to the log.
    await sql.unsafe(`update shop.labels set label = 'b' where id = 2;
      update shop.labels set label = 'c' where id = 3;
      alter table shop.labels alter column label set not null;
      create unique index labels_label on shop.labels (tenant_id, lower(label));`);
    const after = await clearMoment(sql);
    const request = { tenantId: "L", tables: ["shop.labels"] };
    const snapshots = async () =>
      (await sql`select 1 from public.backup_snapshots where tenant_id = 'L'`).length;

    const v = await validateAt(sql, { ...request, at });
    assert.equal(v.valid, false);
    assert.deepEqual(v.checks.filter((c) => !c.ok).map((c) => [c.check, c.message]), [
      ["constraints", "column shop.labels.label is NOT NULL now; 1 snapshot rows break it"],
      [
        "keys",
        "key labels_label of shop.labels: 2 snapshot rows share 1 values of it; the restore " +
        "would be refused",
      ],
    ]);
    const fits = await validateAt(sql, { ...request, at: after });
    assert.equal(fits.valid, true, JSON.stringify(fits.checks));
    assert.deepEqual(fits.checks.map((c) => c.check), ["change_log", "constraints", "keys"]);
    assert.equal(await snapshots(), 0, "validate kept no state of a moment");

    // What validate foresaw is what the restore to that moment refuses, with nothing changed.
    const before = await rows("shop.labels", "L");
    const moment = await snapshotAt(sql, { ...request, at });
    const status = await restore(moment.snapshot_id, "L", ["shop.labels"]);
    assert.equal(status.status, "failed");
    assert.deepEqual(await rows("shop.labels", "L"), before);
  },
);

dbTest(
  "a selective plan foresees collisions on keys on expressions, with a predicate, and exclusion constraints, among the rows it keeps (other tenants' and the tenant's rows not chosen); choosing the row in the way as well clears it",
  async () => {
    await sql.unsafe(`
      create table shop.badges (id bigint primary key, tenant_id text not null, code text,
        active boolean not null default true, span int4range,
        exclude using gist (span with &&));
      create unique index badges_code_lower on shop.badges (lower(code)) where (active);
      insert into pitr.backup_protected_tables (table_schema, table_name)
        values ('shop', 'badges');
      insert into shop.badges values (1, 's', 'A', true, '[1,5)'), (2, 's', 'B', true, '[5,9)');`);
    const s = await takeSnapshot(sql, { tenantId: "s", tables: ["shop.badges"] });
    const choose = (ids: number[]) => [{ table: "shop.badges", keys: ids.map((id) => ({ id })) }];
    const foreseen = async (ids: number[]) => {
      const plan: Plan = await inRolledBackTransaction(sql, (tx) =>
        planRestore(tx, {
          snapshotId: s.snapshot_id,
          strategy: "selective",
          selection: choose(ids),
        }));
      return plan.warnings.filter((w) => w.code === "key_conflict").map((w) => w.message);
    };
    const restore = (ids: number[]) =>
      restoreSnapshot(sql, {
        snapshotId: s.snapshot_id,
        tenantId: "s",
        strategy: "selective",
        selection: choose(ids),
      });
    const refusedOn = async (key: string, ids: number[]) => {
      const before = await rows("shop.badges", "s");
      const warnings = await foreseen(ids);
      assert.equal(warnings.length, 1, JSON.stringify(warnings));
      assert.match(warnings[0], new RegExp(`collide on key ${key} with rows the restore keeps`));
      const status = await restore(ids);
      assert.equal(status.status, "failed", JSON.stringify(status));
      assert.equal(status.error!.code, "key_conflict");
      assert.match(status.error!.message, new RegExp(key));
      assert.deepEqual(await rows("shop.badges", "s"), before);
    };
    await sql`delete from shop.badges where id = 1`;
    // Another tenant's active code, in another case; then its overlapping span.
    await sql`insert into shop.badges values (3, 't', 'a', true, null)`;
    await refusedOn("badges_code_lower", [1]);
    await sql`update shop.badges set code = null, span = '[2,3)' where id = 3`;
    await refusedOn("badges_span_excl", [1]);
    await sql`delete from shop.badges where id = 3`;
    // The tenant's own row 2, not chosen, took the code; chosen too, it gives it back.
    await sql`update shop.badges set code = 'a' where id = 2`;
    await refusedOn("badges_code_lower", [1]);
    assert.deepEqual(await foreseen([1, 2]), []);
    const done = await restore([1, 2]);
    assert.equal(done.status, "completed", JSON.stringify(done.error));
    assert.deepEqual(await rows("shop.badges", "s"), [
      '(1,s,A,t,"[1,5)")',
      '(2,s,B,t,"[5,9)")',
    ]);
  },
);

cleanup(db);
