// What keeps one tenant's cost independent of the fleet and of its history (issues 12, 13),
// checked on the catalog: the stores' btrees of open and closed versions (no BRIN), their
// fillfactor, and no JIT inside the engine; and on a plan's and a restore's own statistics: a plan
// reads none of the tenant's closed versions, FK checks find parent rows by key, not by a scan of
// every tenant's, dropping a snapshot reads only the versions it alone held, and a restore asks
// whether the tenant has rows by its index.
import assert from "node:assert/strict";
import { applySnapshot } from "../shared/restore/apply.ts";
import { connect, type Db } from "../shared/db/client.ts";
import { planRestore } from "../shared/restore/plan.ts";
import { snapshotIn, takeSnapshot } from "../shared/restore/snapshot.ts";
import { cleanup, dbTest, testDatabase } from "./_db.ts";

const db = await testDatabase("fleet");
const sql = db.sql;

await sql`select public.seed_tenant(401, 5)`;

/**
 * Runs fn in a transaction on a backend of its own: a backend's pg_stat_get_xact_* counters hold
 * what it did since it last reported its statistics (at most once a second), so a backend that
 * did nothing before counts this transaction's reads alone.
 */
async function onNewBackend<T>(fn: (tx: Db) => Promise<T>): Promise<T> {
  const own = connect(db.url, { max: 1 });
  try {
    return await own.begin((tx) => fn(tx)) as T;
  } finally {
    await own.end({ timeout: 5 });
  }
}

/**
 * A tenant of 500 users, every row changed each day after the first, each day's snapshot kept:
 * the snapshots, oldest first, and the users' store.
 */
async function dailyHistory(tenant: number, days: number) {
  await sql`insert into public.tenants (id, name) values (${tenant}, 'history')`;
  await sql`insert into public.users (tenant_id, email)
    select ${tenant}, 'h' || g || '@example' from generate_series(1, 500) g`;
  const snapshots = [await takeSnapshot(sql, { tenantId: String(tenant) })];
  for (let day = 1; day < days; day++) {
    await sql`update public.users set display_name = ${`day ${day}`} where tenant_id = ${tenant}`;
    snapshots.push(await takeSnapshot(sql, { tenantId: String(tenant) }));
  }
  const [{ store_table }] = await sql<{ store_table: string }[]>`
    select store_table from pitr.backup_snapshot_tables
    where snapshot_id = ${snapshots[0].snapshot_id} and table_name = 'users'`;
  return { snapshots, store: `pitr_store.${store_table}` };
}

/** This transaction's own counters: the entries its scans read from the store's index (suffix). */
async function indexReads(tx: Db, store: string): Promise<(suffix: string) => number> {
  const read = await tx<{ index: string; n: number }[]>`
    select indexrelid::regclass::text as index,
      pg_stat_get_xact_tuples_returned(indexrelid)::int as n
    from pg_index where indrelid = ${store}::regclass`;
  return (suffix) => read.find((r) => r.index.endsWith(suffix))!.n;
}

/** This transaction's own counters of how it read a table: its scans, and by the indexes. */
async function tableReads(tx: Db, table: string) {
  const [r] = await tx<
    { seq_scan: number; seq_tup_read: number; idx_scan: number; idx_tup_fetch: number }[]
  >`
    select seq_scan::int, seq_tup_read::int, idx_scan::int, idx_tup_fetch::int
    from pg_stat_xact_user_tables
    where relid = ${table}::regclass`;
  return r;
}

/** Adds `count` users of a tenant, their emails `prefix` followed by a number. */
async function addUsers(tenant: number, prefix: string, count: number) {
  await sql`insert into public.users (tenant_id, email)
    select ${tenant}, ${prefix} || g || '@example' from generate_series(1, ${count}::int) g`;
}

dbTest(
  "every store has a btree of open versions, one of closed ones, no BRIN, and fillfactor 90",
  async () => {
    await takeSnapshot(sql, { tenantId: "401" });
    const stores = await sql<{ store: string; btree: string[]; brin: number; options: string[] }[]>`
    select c.relname as store,
      array(select pg_get_indexdef(i.indexrelid) from pg_index i join pg_class x
          on x.oid = i.indexrelid join pg_am a on a.oid = x.relam
        where i.indrelid = c.oid and a.amname = 'btree') as btree,
      (select count(*)::int from pg_index i join pg_class x on x.oid = i.indexrelid
        join pg_am a on a.oid = x.relam where i.indrelid = c.oid and a.amname = 'brin') as brin,
      coalesce(c.reloptions, '{}') as options
    from pg_class c where c.relnamespace = 'pitr_store'::regnamespace and c.relkind = 'r'`;
    assert.ok(stores.length >= 5, `${stores.length} stores`);
    for (const s of stores) {
      assert.equal(s.brin, 0, s.store);
      assert.deepEqual(s.btree.map((d) => d.replace(/^.* USING btree /, "")).sort(), [
        "(pitr_tenant, pitr_from) WHERE (pitr_to IS NULL)",
        "(pitr_tenant, pitr_to) WHERE (pitr_to IS NOT NULL)",
      ], s.store);
      assert.ok(s.options.includes("fillfactor=90"), `${s.store}: ${s.options}`);
    }
  },
);

dbTest("closing a version keeps it on its page", async () => {
  const [{ store_table }] = await sql<{ store_table: string }[]>`
    select store_table from pitr.backup_snapshot_tables t join public.backup_snapshots s
      on s.id = t.snapshot_id
    where s.tenant_id = '401' and t.table_name = 'users'`;
  await sql`update public.users set display_name = 'changed' where tenant_id = 401`;
  const before = await sql<{ ctid: string }[]>`select ctid::text from ${
    sql("pitr_store." + store_table)
  } where pitr_tenant = '401' and pitr_to is null order by ctid`;
  await takeSnapshot(sql, { tenantId: "401" });
  const closed = await sql<{ ctid: string }[]>`select ctid::text from ${
    sql("pitr_store." + store_table)
  } where pitr_tenant = '401' and pitr_to is not null order by ctid`;
  assert.equal(closed.length, before.length);
  const pages = (rows: { ctid: string }[]) => [...new Set(rows.map((r) => r.ctid.split(",")[0]))];
  assert.deepEqual(pages(closed), pages(before), "the closed versions stay on their pages");
});

dbTest(
  "a plan of the latest snapshot reads the tenant's rows from the store, none of its history",
  async () => {
    // Five days of every row changed after the first, each day's snapshot kept: 2,500 closed
    // versions.
    const { snapshots, store } = await dailyHistory(405, 6);
    const latest = snapshots[snapshots.length - 1];
    const [{ closed }] = await sql<{ closed: number }[]>`select count(*)::int as closed from ${
      sql(store)
    } where pitr_tenant = '405' and pitr_to is not null`;
    assert.equal(closed, 2500);
    // As autovacuum would have: the index entries of the versions' earlier states are gone.
    await sql`vacuum ${sql(store)}`;
    const n = await onNewBackend(async (tx) => {
      const plan = await planRestore(tx, { snapshotId: latest.snapshot_id, tables: ["users"] });
      assert.equal(plan.totals.update + plan.totals.insert + plan.totals.delete, 0);
      return await indexReads(tx, store);
    });
    // Each of the plan's passes over the snapshot reads its 500 open versions, and no closed one.
    assert.equal(n("_closed"), 0);
    assert.ok(n("_open") >= 500 && n("_open") % 500 === 0, `${n("_open")} open entries read`);
  },
);

dbTest("every engine function with settings runs without JIT", async () => {
  const jitted = await sql<{ f: string }[]>`
    select p.oid::regprocedure::text as f from pg_proc p
    where p.pronamespace = 'pitr'::regnamespace and p.proconfig is not null
      and p.proname !~ '^capture_\\d+$'
      and not exists (select from unnest(p.proconfig) s where s = 'jit=off')`;
  assert.deepEqual([...jitted], []);
});

dbTest(
  "a restore's FK check finds its 1,000 parents by key, never by a scan of every tenant's",
  async () => {
    // The parent table is mostly another tenant's: 30,000 users beside the restored tenant's 1,000.
    await sql`insert into public.tenants (id, name) values (403, 'restored'), (404, 'fleet')`;
    await addUsers(404, "fleet", 30000);
    await addUsers(403, "own", 1000);
    const [{ id: campaign }] = await sql<{ id: string }[]>`
    insert into public.campaigns (tenant_id, title) values (403, 'c') returning id`;
    await sql`insert into public.enrollments (tenant_id, campaign_id, user_id)
    select 403, ${campaign}, id from public.users where tenant_id = 403`;
    await sql`analyze public.users`;
    await sql`analyze public.enrollments`;
    const snap = await takeSnapshot(sql, { tenantId: "403" });
    await sql`delete from public.enrollments where tenant_id = 403`;
    // The restore writes 1,000 enrollments, each pointing at a different user. Its transaction's own
    // counters say how the users table was read; a hash join read all 31,000 users by a scan.
    const reads = await onNewBackend(async (tx) => {
      await applySnapshot(tx, snap.snapshot_id, { strategy: "overwrite", tables: ["enrollments"] });
      return await tableReads(tx, "public.users");
    });
    const [{ n }] = await sql<{ n: number }[]>`
    select count(*)::int as n from public.enrollments where tenant_id = 403`;
    assert.equal(n, 1000);
    assert.equal(reads.seq_scan, 0, "no scan of the users table");
    assert.ok(reads.idx_scan > 0, `${reads.idx_scan} index scans`);
  },
);

dbTest(
  "dropping a snapshot reads the versions it alone held, none of the tenant's other history",
  async () => {
    // Eight days of every row changed after the first, each day's snapshot kept: 3,500 closed
    // versions.
    const { snapshots: days, store } = await dailyHistory(406, 8);
    const versions = async (closed: boolean) => {
      const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from ${sql(store)}
        where pitr_tenant = '406' and (pitr_to is not null) = ${closed}`;
      return n;
    };
    assert.equal(await versions(true), 3500);
    // Day 3's 500 versions are its alone: written on day 3, closed by day 4's snapshot.
    const n = await onNewBackend(async (tx) => {
      await tx`select pitr.drop_snapshot(${days[3].snapshot_id})`;
      return await indexReads(tx, store);
    });
    assert.equal(n("_closed"), 500, "the closed entries read: those closed by the next snapshot");
    assert.equal(n("_open"), 0);
    assert.equal(await versions(true), 3000);
    assert.equal(await versions(false), 500);
    // What is left is what the other snapshots hold: each still validates.
    for (const day of [2, 4]) {
      const [{ bad }] = await sql<{ bad: number }[]>`
        select count(*)::int as bad from pitr.validate_table(${
        days[day].tables.find((t) => t.name === "public.users")!.id
      }) where not ok`;
      assert.equal(bad, 0, `day ${day}`);
    }
  },
);

dbTest(
  "a restore asks whether the tenant has rows by its index, never by a scan of every tenant's",
  async () => {
    // A third of the users table is the restored tenant's, stored after the fleet's 30,000: a
    // planner that expects one of them within the first three rows of a scan reads them all.
    await sql`insert into public.tenants (id, name) values (407, 'fleet'), (408, 'restored')`;
    await addUsers(407, "fleet", 30000);
    await addUsers(408, "own", 15000);
    await sql`analyze public.users`;
    const snap = await takeSnapshot(sql, { tenantId: "408", tables: ["users"] });
    await sql`update public.users set display_name = 'changed'
      where tenant_id = 408 and email = 'own1@example'`;
    const reads = await onNewBackend(async (tx) => {
      await applySnapshot(tx, snap.snapshot_id, { strategy: "overwrite", tables: ["users"] });
      return await tableReads(tx, "public.users");
    });
    const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from public.users
      where tenant_id = 408 and display_name is null`;
    assert.equal(n, 15000, "the restore put the changed row back");
    assert.equal(reads.seq_tup_read, 0, "no row of the users table read by a scan");
    assert.equal(reads.seq_scan, 0);
    // The diff and the verification read the tenant's 15,000 users, nothing else: the keys that
    // point across the edge of this partial restore (campaigns' and enrollments' users) are
    // checked from the one row it wrote. Its plan's pass over the tenant's users for each, which
    // the planner sometimes made a scan of the whole table, came on top of them (60,003 rows).
    assert.ok(reads.idx_tup_fetch <= 30010, `${reads.idx_tup_fetch} rows of users read`);
  },
);

dbTest(
  "a plan of a partial restore finds the children of the keys it takes away by key, never by a scan of every tenant's",
  async () => {
    // Five users added since the snapshot: restoring users alone would take their keys away, so
    // the plan counts the enrollments pointing at them. Estimated as all 1,005 of the tenant's
    // users, the five were joined with every tenant's 4,000 enrollments by a scan.
    await sql`insert into public.tenants (id, name) values (409, 'restored'), (410, 'fleet')`;
    await addUsers(410, "fleet", 3000);
    await addUsers(409, "own", 1000);
    for (const tenant of [409, 410]) {
      const [{ id: campaign }] = await sql<{ id: string }[]>`
        insert into public.campaigns (tenant_id, title) values (${tenant}, 'c') returning id`;
      await sql`insert into public.enrollments (tenant_id, campaign_id, user_id)
        select ${tenant}, ${campaign}, id from public.users where tenant_id = ${tenant}`;
    }
    await sql`analyze public.users`;
    await sql`analyze public.enrollments`;
    const snap = await takeSnapshot(sql, { tenantId: "409", tables: ["users"] });
    await addUsers(409, "since", 5);
    const reads = await onNewBackend(async (tx) => {
      const plan = await planRestore(tx, { snapshotId: snap.snapshot_id, tables: ["users"] });
      assert.equal(plan.tables[0].delete, 5);
      return await tableReads(tx, "public.enrollments");
    });
    assert.equal(reads.seq_scan, 0, "no scan of the enrollments table");
    assert.ok(reads.idx_scan > 0, `${reads.idx_scan} index scans`);
  },
);

dbTest(
  "a restore of rows changed in one table deletes, checks keys and checks foreign keys in that table alone, verifies every table, and its undo puts the change back",
  async () => {
    await sql`select public.seed_tenant(411, 5)`;
    const snap = await takeSnapshot(sql, { tenantId: "411" });
    await sql`update public.campaigns set title = title || ' (edited)' where tenant_id = 411`;
    const [{ edited }] = await sql<{ edited: number }[]>`
      select count(*)::int as edited from public.campaigns where tenant_id = 411`;
    assert.ok(edited > 0);
    const functions = [
      "restore_delete(bigint)",
      "deferred_key_conflicts(bigint)",
      "fk_dangling_children(oid,bigint,bigint)",
      "fk_orphans_of_deleted(oid,bigint)",
      "verify_table(bigint,text,boolean)",
    ];
    // This transaction's own calls of each function, counted by PostgreSQL.
    const { calls, applied } = await onNewBackend(async (tx) => {
      await tx`select set_config('track_functions', 'all', true)`;
      const applied = await applySnapshot(tx, snap.snapshot_id, { strategy: "overwrite" });
      const rows = await tx<{ f: string; n: number }[]>`
        select f, coalesce(pg_stat_get_xact_function_calls(('pitr.' || f)::regprocedure), 0)::int
          as n from unnest(${functions}::text[]) f`;
      return { calls: Object.fromEntries(rows.map((r) => [r.f, r.n])), applied };
    });
    const [fks] = await sql<{ child: number; parent: number }[]>`
      select count(*) filter (where conrelid = 'public.campaigns'::regclass)::int as child,
        count(*) filter (where confrelid = 'public.campaigns'::regclass)::int as parent
      from pg_constraint where contype = 'f'`;
    assert.deepEqual(calls, {
      "restore_delete(bigint)": 1,
      "deferred_key_conflicts(bigint)": 1,
      "fk_dangling_children(oid,bigint,bigint)": fks.child,
      "fk_orphans_of_deleted(oid,bigint)": fks.parent,
      "verify_table(bigint,text,boolean)": applied.tables.length,
    });
    assert.ok(applied.tables.length > 3, `${applied.tables.length} tables restored`);
    const [{ left }] = await sql<{ left: number }[]>`
      select count(*)::int as left from public.campaigns
      where tenant_id = 411 and title like '% (edited)'`;
    assert.equal(left, 0);
    // The undo, taken from the diff for every table, restores the tenant as it was before.
    await sql.begin(async (tx) => {
      await applySnapshot(tx, applied.undoSnapshotId!, { strategy: "overwrite" });
    });
    const [{ back }] = await sql<{ back: number }[]>`
      select count(*)::int as back from public.campaigns
      where tenant_id = 411 and title like '% (edited)'`;
    assert.equal(back, edited);
  },
);

dbTest(
  "a restore's diff reads the stored rows of the tables changed since the snapshot, and of no other",
  async () => {
    await sql`select public.seed_tenant(412, 5)`;
    // Users, not written, above the 10,000 rows the probe before the pass is asked for: their pass
    // finds the same in its own statement and never reads their store.
    await addUsers(412, "many", 10000);
    const snap = await takeSnapshot(sql, { tenantId: "412" });
    // Rows of one table updated; rows of another deleted and nothing else (no row of it new, but
    // fewer of them).
    await sql`update public.lessons set body = body || ' (edited)' where tenant_id = 412`;
    const [{ gone }] = await sql<{ gone: number }[]>`
      with d as (delete from public."Audit Log" where tenant_id = 412 returning 1)
      select count(*)::int as gone from d`;
    assert.ok(gone > 0);
    const tables = await sql<{ id: string; table_name: string; store: string }[]>`
      select id, table_name, 'pitr_store.' || store_table as store
      from pitr.backup_snapshot_tables where snapshot_id = ${snap.snapshot_id} and row_count > 0`;
    assert.ok(tables.length > 3, `${tables.length} tables with rows`);
    // Each table's diff as a restore makes it, and the scans of its store that diff made.
    const diffs = await onNewBackend(async (tx) => {
      const out: Record<string, { reads: number; ins: number; upd: number; del: number }> = {};
      const scans = async (store: string) => {
        const [{ n }] = await tx<{ n: number }[]>`
          select coalesce(sum(seq_scan + idx_scan), 0)::int as n from pg_stat_xact_user_tables
          where relid = ${store}::regclass`;
        return n;
      };
      for (const t of tables) {
        const before = await scans(t.store);
        const [d] = await tx<{ ins: number; upd: number; del: number }[]>`
          select ins::int, upd::int, del::int from pitr.table_diff(${t.id}, 'overwrite', true)`;
        out[t.table_name] = { reads: (await scans(t.store)) - before, ...d };
      }
      return out;
    });
    for (const { table_name } of tables) {
      const d = diffs[table_name];
      if (table_name === "lessons") {
        assert.deepEqual(d, { reads: d.reads, ins: 0, upd: 5, del: 0 });
      } else if (table_name === "Audit Log") {
        assert.deepEqual(d, { reads: d.reads, ins: gone, upd: 0, del: 0 });
      } else {
        assert.deepEqual(d, { reads: 0, ins: 0, upd: 0, del: 0 }, `${table_name}: nothing read`);
        continue;
      }
      assert.ok(d.reads > 0, `the store of ${table_name} read`);
    }
    // The restore puts both tables back.
    await sql.begin((tx) => applySnapshot(tx, snap.snapshot_id, { strategy: "overwrite" }));
    const [after] = await sql<{ edited: number; entries: number }[]>`
      select (select count(*)::int from public.lessons
          where tenant_id = 412 and body like '% (edited)') as edited,
        (select count(*)::int from public."Audit Log" where tenant_id = 412) as entries`;
    assert.deepEqual(after, { edited: 0, entries: gone });
  },
);

dbTest(
  "a snapshot asks whether the tenant wrote a table since by the tenant's index, never by a scan of every tenant's",
  async () => {
    // As above: a third of the users table is the tenant's, stored after the fleet's 30,000.
    await sql`insert into public.tenants (id, name) values (416, 'fleet'), (417, 'snapshotted')`;
    await addUsers(416, "fleet", 30000);
    await addUsers(417, "own", 15000);
    await sql`analyze public.users`;
    await takeSnapshot(sql, { tenantId: "417", tables: ["users"] });
    const reads = await onNewBackend(async (tx) => {
      await snapshotIn(tx, { tenantId: "417", tables: ["users"] });
      return await tableReads(tx, "public.users");
    });
    assert.equal(reads.seq_scan, 0, "no scan of the users table");
    assert.equal(reads.seq_tup_read, 0);
    assert.ok(reads.idx_scan > 0, `${reads.idx_scan} index scans`);
  },
);

dbTest(
  "a plan makes its pass only over the tables written since the snapshot, and still checks the others' stored rows",
  async () => {
    await sql`select public.seed_tenant(418, 5)`;
    const snap = await takeSnapshot(sql, { tenantId: "418" });
    await sql`update public.lessons set body = body || ' (edited)' where tenant_id = 418`;
    // The passes this transaction built: each builds its row hashes once (pitr.row_hash_sql).
    const { plan, passes } = await onNewBackend(async (tx) => {
      await tx`select set_config('track_functions', 'all', true)`;
      const plan = await planRestore(tx, { snapshotId: snap.snapshot_id });
      const [{ n }] = await tx<{ n: number }[]>`select coalesce(pg_stat_get_xact_function_calls(
        'pitr.row_hash_sql(text[],boolean)'::regprocedure), 0)::int as n`;
      return { plan, passes: n };
    });
    assert.ok(plan.tables.length > 3, `${plan.tables.length} tables`);
    assert.equal(passes, 1);
    assert.deepEqual(plan.totals, {
      insert: 0,
      update: 5,
      delete: 0,
      unchanged: plan.tables.reduce((n, t) => n + t.unchanged, 0),
    });
    // A stored row of a table not written since goes missing: the plan's checksum of that table,
    // the stored hashes alone, no longer matches the one recorded.
    const [{ store }] = await sql<{ store: string }[]>`
      select 'pitr_store.' || store_table as store from pitr.backup_snapshot_tables
      where snapshot_id = ${snap.snapshot_id} and table_name = 'teams'`;
    await sql`delete from ${sql(store)} where pitr_tenant = '418'
      and ctid = (select min(ctid) from ${sql(store)} where pitr_tenant = '418')`;
    await assert.rejects(
      planRestore(sql, { snapshotId: snap.snapshot_id }),
      (e: Error & { code?: string }) => e.code === "snapshot_invalid",
    );
  },
);

dbTest(
  "the pass over a table of more than 10,000 of the tenant's rows reads its store only when the tenant wrote the table since",
  async () => {
    await sql`select public.seed_tenant(419, 5)`;
    await addUsers(419, "big", 10001);
    const usersOf = async (snapshotId: string) => {
      const [t] = await sql<{ id: string; store: string }[]>`
        select id, 'pitr_store.' || store_table as store from pitr.backup_snapshot_tables
        where snapshot_id = ${snapshotId} and table_name = 'users'`;
      return t;
    };
    // The users' diff as a restore makes it, and the scans of their store it made.
    const diff = (t: { id: string; store: string }) =>
      onNewBackend(async (tx) => {
        const [d] = await tx<{ ins: number; upd: number; del: number }[]>`
          select ins::int, upd::int, del::int from pitr.table_diff(${t.id}, 'overwrite', true)`;
        return { ...d, reads: (await tableReads(tx, t.store)).idx_scan };
      });
    // The tenant's last user: rows deleted or updated at the end of the tenant's rows.
    const [{ last }] = await sql<{ last: string }[]>`select id as last from public.users
      where tenant_id = 419 and email like 'big%' order by email desc limit 1`;

    const snap = await takeSnapshot(sql, { tenantId: "419" });
    const users = await usersOf(snap.snapshot_id);
    assert.deepEqual(await diff(users), { ins: 0, upd: 0, del: 0, reads: 0 }, "not written");
    // A row deleted: no row written since, but one row fewer.
    await sql`delete from public.users where id = ${last}`;
    const deleted = await diff(users);
    assert.deepEqual(deleted, { ins: 1, upd: 0, del: 0, reads: deleted.reads }, "a row deleted");
    assert.ok(deleted.reads > 0, "the store read after a delete");
    await sql.begin((tx) => applySnapshot(tx, snap.snapshot_id, { strategy: "overwrite" }));

    // A row updated: as many rows as the snapshot, one of them written since.
    const restored = await takeSnapshot(sql, { tenantId: "419" });
    const again = await usersOf(restored.snapshot_id);
    assert.deepEqual(await diff(again), { ins: 0, upd: 0, del: 0, reads: 0 }, "restored");
    await sql`update public.users set display_name = 'edited' where id = ${last}`;
    const updated = await diff(again);
    assert.deepEqual(updated, { ins: 0, upd: 1, del: 0, reads: updated.reads }, "a row updated");
    assert.ok(updated.reads > 0, "the store read after an update");
    await sql.begin((tx) => applySnapshot(tx, restored.snapshot_id, { strategy: "overwrite" }));
    const [after] = await sql<{ edited: number; users: number }[]>`
      select count(*) filter (where display_name = 'edited')::int as edited, count(*)::int as users
      from public.users where tenant_id = 419`;
    assert.deepEqual(after, { edited: 0, users: 10006 });
  },
);

class RolledBack extends Error {}

dbTest(
  "a table found quiet and then written in the same transaction is diffed again in full",
  async () => {
    await sql`select public.seed_tenant(413, 5)`;
    const snap = await takeSnapshot(sql, { tenantId: "413" });
    const [{ id }] = await sql<{ id: string }[]>`select id from pitr.backup_snapshot_tables
      where snapshot_id = ${snap.snapshot_id} and table_name = 'lessons'`;
    await sql.begin(async (tx) => {
      const diff = async () => {
        const [d] = await tx<{ upd: number; quiet: boolean; sets: boolean }[]>`
          select d.upd::int, pitr.diff_quiet(${id}) as quiet,
            to_regclass((pitr.restore_sql(${id})).writes) is not null as sets
          from pitr.table_diff(${id}, 'overwrite', true) d`;
        return d;
      };
      assert.deepEqual(await diff(), { upd: 0, quiet: true, sets: false });
      await tx`update public.lessons set body = 'changed' where tenant_id = 413
        and id = (select min(id) from public.lessons where tenant_id = 413)`;
      assert.deepEqual(await diff(), { upd: 1, quiet: false, sets: true });
      await tx`select pitr.restore_write(${id}, 1, 2)`;
      const [{ changed }] = await tx<{ changed: number }[]>`select count(*)::int as changed
        from public.lessons where tenant_id = 413 and body = 'changed'`;
      assert.equal(changed, 0);
      throw new RolledBack();
    }).catch((e) => {
      if (!(e instanceof RolledBack)) throw e;
    });
  },
);

cleanup(db);
