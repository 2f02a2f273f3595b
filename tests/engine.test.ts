// The restore engine on a real PostgreSQL: exact restores, isolation from other tenants, and
// all-or-nothing failures. Every assertion is on rows in the database.
import assert from "node:assert/strict";
import { applySnapshot } from "../shared/restore/apply.ts";
import { createRestore } from "../shared/restore/history.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { planRestore } from "../shared/restore/plan.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { validateSnapshot } from "../shared/restore/validate.ts";
import { runDrills } from "../shared/restore/drill.ts";
import { Conflict } from "../shared/restore/errors.ts";
import { cleanup, dbTest, restoreSnapshot, storeOf, tenantDigest, testDatabase } from "./_db.ts";

const db = await testDatabase("engine");
const sql = db.sql;

const digest = (t: number) => tenantDigest(sql, t);
async function versions(t: number): Promise<string> {
  const [r] = await sql<{ v: string }[]>`select public.tenant_versions(${t}) as v`;
  return r.v;
}
async function restore(
  snapshotId: string,
  tenant: string,
  extra: { tables?: string[]; strategy?: "overwrite" | "merge" } = {},
) {
  return await restoreSnapshot(sql, {
    snapshotId,
    tenantId: tenant,
    strategy: extra.strategy ?? "overwrite",
    tables: extra.tables,
  });
}

/** Damages tenant t across every table: deletes that cascade, updates, inserts, a renamed tenant. */
async function damage(t: number) {
  await sql`update public.tenants set name = 'renamed' where id = ${t}`;
  await sql`delete from public.users where tenant_id = ${t} and email like 'u2%'`;
  await sql`update public.users set display_name = 'hacked', tags = '{}', profile = '{"x":1}'
    where tenant_id = ${t} and email like 'u3%'`;
  await sql`insert into public.users (tenant_id, email) values (${t}, 'intruder@example')`;
  await sql`update public.campaigns set title = 'bad import', budget = 0 where tenant_id = ${t}`;
  await sql`delete from public.lessons where tenant_id = ${t} and body = 'Lesson 1'`;
  await sql`update public.teams set captain_id = null where tenant_id = ${t}`;
  await sql`delete from public.members where tenant_id = ${t}`;
  await sql`update public.quizzes set first_question = null where tenant_id = ${t}`;
  await sql`delete from public.questions where tenant_id = ${t}`;
  await sql`update public."Audit Log" set "Message Text" = 'x' where tenant_id = ${t}`;
  await sql`delete from crm.contacts where org = ${String(t)}`;
}

await sql`select public.seed_tenant(101, 40), public.seed_tenant(102, 40), public.seed_tenant(103, 8)`;

dbTest("a snapshot covers every protected table, with row counts and checksums", async () => {
  const s = await takeSnapshot(sql, { tenantId: "101", label: "first" });
  const names = s.tables.map((t) => t.name).sort();
  assert.deepEqual(names, [
    "crm.contacts",
    "public.Audit Log",
    "public.campaigns",
    "public.enrollments",
    "public.lessons",
    "public.members",
    "public.questions",
    "public.quizzes",
    "public.teams",
    "public.tenants",
    "public.users",
  ]);
  const [{ n }] = await sql<
    { n: string }[]
  >`select count(*) as n from public.users where tenant_id = 101`;
  assert.equal(s.tables.find((t) => t.name === "public.users")!.rows, Number(n));
  assert.equal(s.tables.find((t) => t.name === "public.tenants")!.rows, 1);
  assert.equal(s.tables.find((t) => t.name === "crm.contacts")!.rows, 2);
  assert.ok(s.tables.every((t) => /^\d+:-?\d+$/.test(t.checksum)));
  assert.equal(s.total_rows, s.tables.reduce((a, t) => a + t.rows, 0));
});

dbTest(
  "restore puts a damaged tenant back exactly and leaves other tenants' rows unwritten",
  async () => {
    const before = await digest(101);
    const snap = await takeSnapshot(sql, { tenantId: "101" });
    const other = await digest(102);
    const otherVersions = await versions(102);
    const [{ n: logBefore }] = await sql<
      { n: string }[]
    >`select count(*) as n from public.trigger_log`;

    await damage(101);
    assert.notEqual(await digest(101), before);
    const [{ n: logDamaged }] = await sql<
      { n: string }[]
    >`select count(*) as n from public.trigger_log`;
    assert.ok(Number(logDamaged) > Number(logBefore));

    const status = await restore(snap.snapshot_id, "101");
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    assert.equal(await digest(101), before);
    assert.equal(await digest(102), other);
    assert.equal(await versions(102), otherVersions);
    // The application's triggers did not fire on restored rows.
    const [{ n: logAfter }] = await sql<
      { n: string }[]
    >`select count(*) as n from public.trigger_log`;
    assert.equal(logAfter, logDamaged);
    assert.equal(status.progress_pct, 100);
    assert.ok(status.undo_snapshot_id);
    assert.equal(status.tables_restored.length, 11);
  },
);

dbTest(
  "a restore twice is a no-op the second time: the plan is empty and no row is rewritten",
  async () => {
    const snap = await takeSnapshot(sql, { tenantId: "103" });
    await damage(103);
    assert.equal((await restore(snap.snapshot_id, "103")).status, "completed");
    const after = await digest(103);
    const v = await versions(103);
    const plan = await planRestore(sql, { snapshotId: snap.snapshot_id });
    assert.deepEqual({ ...plan.totals, unchanged: 0 }, {
      insert: 0,
      update: 0,
      delete: 0,
      unchanged: 0,
    });
    assert.equal((await restore(snap.snapshot_id, "103")).status, "completed");
    assert.equal(await digest(103), after);
    assert.equal(await versions(103), v);
  },
);

dbTest("the undo snapshot brings back the state before the restore", async () => {
  const snap = await takeSnapshot(sql, { tenantId: "102" });
  await sql`update public.users set display_name = 'changed later' where tenant_id = 102`;
  const changed = await digest(102);
  const status = await restore(snap.snapshot_id, "102");
  assert.equal(status.status, "completed");
  assert.notEqual(await digest(102), changed);
  const undo = await restore(status.undo_snapshot_id!, "102");
  assert.equal(undo.status, "completed", JSON.stringify(undo.error));
  assert.equal(await digest(102), changed);
});

dbTest(
  "the undo of a restore into emptied tables brings the emptiness back, and validates",
  async () => {
    const snap = await takeSnapshot(sql, { tenantId: "103" });
    const original = await digest(103);
    await damage(103); // empties members, questions and crm.contacts of the tenant
    const [{ n }] = await sql<{ n: number }[]>`
      select (select count(*) from public.members where tenant_id = 103)::int as n`;
    assert.equal(n, 0);
    const damaged = await digest(103);
    const status = await restore(snap.snapshot_id, "103");
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    assert.equal(await digest(103), original);
    const check = await validateSnapshot(sql, status.undo_snapshot_id!);
    assert.equal(check.valid, true, JSON.stringify(check));
    const undo = await restore(status.undo_snapshot_id!, "103");
    assert.equal(undo.status, "completed", JSON.stringify(undo.error));
    assert.equal(await digest(103), damaged);
    const again = await restore(snap.snapshot_id, "103");
    assert.equal(again.status, "completed", JSON.stringify(again.error));
    assert.equal(await digest(103), original);
  },
);

dbTest("a plan counts rows per table and changes nothing", async () => {
  const snap = await takeSnapshot(sql, { tenantId: "101" });
  await sql`delete from public.enrollments where tenant_id = 101 and score is null`;
  await sql`update public.lessons set body = 'edited' where tenant_id = 101 and body = 'Lesson 2'`;
  await sql`insert into public.lessons (tenant_id, body) values (101, 'new one'), (101, 'new two')`;
  const d = await digest(101);
  const v = await versions(101);
  const store = await storeOf(sql, snap.tables.find((t) => t.name === "public.enrollments")!.id);
  const [{ n: nulls }] = await sql<{ n: string }[]>`
    select count(*) as n from pitr_store.${sql(store.table)} s
    where s.pitr_tenant = ${store.tenant} and s.pitr_from <= ${store.seq}
      and (s.pitr_to is null or s.pitr_to > ${store.seq}) and score is null`;
  const plan = await planRestore(sql, { snapshotId: snap.snapshot_id });
  const lessons = plan.tables.find((t) => t.table === "public.lessons")!;
  assert.deepEqual(lessons, {
    table: "public.lessons",
    insert: 0,
    update: 1,
    delete: 2,
    unchanged: 4,
  });
  const enrollments = plan.tables.find((t) => t.table === "public.enrollments")!;
  assert.equal(enrollments.insert, Number(nulls));
  assert.ok(plan.order.indexOf("public.tenants") < plan.order.indexOf("public.users"));
  assert.ok(plan.order.indexOf("public.campaigns") < plan.order.indexOf("public.enrollments"));
  assert.deepEqual([...plan.cycles].sort(), [["public.members", "public.teams"], [
    "public.questions",
    "public.quizzes",
  ], ["public.users"]]);
  assert.equal(await digest(101), d);
  assert.equal(await versions(101), v);
  const merge = await planRestore(sql, { snapshotId: snap.snapshot_id, strategy: "merge" });
  assert.deepEqual(merge.tables.find((t) => t.table === "public.lessons"), {
    table: "public.lessons",
    insert: 0,
    update: 0,
    delete: 0,
    unchanged: 5,
  });
  assert.equal((await restore(snap.snapshot_id, "101")).status, "completed");
});

dbTest(
  "a plan of a table hashed by its text (a json column) counts rows added since, and the snapshot is intact",
  async () => {
    // Its checksum used to count each row to delete with the hash of an all-NULL snapshot row:
    // 422 snapshot_invalid, "the snapshot was altered", for any row added since.
    await sql`create table public.json_notes (id int primary key, tenant_id bigint not null,
      body json)`;
    await sql`insert into public.json_notes values (1, 101, '{"a": 1}'), (2, 101, '[ ]'),
      (3, 102, 'null')`;
    const snap = await takeSnapshot(sql, { tenantId: "101", tables: ["json_notes"] });
    await sql`insert into public.json_notes values (4, 101, '{"b": 2}')`;
    await sql`update public.json_notes set body = '{"a": 2}' where id = 1`;
    const plan = await planRestore(sql, { snapshotId: snap.snapshot_id });
    assert.deepEqual(plan.totals, { insert: 0, update: 1, delete: 1, unchanged: 1 });
    assert.equal((await restore(snap.snapshot_id, "101")).status, "completed");
    assert.deepEqual(
      (await sql`select id, body::text from public.json_notes order by id`).map((r) => [
        r.id,
        r.body,
      ]),
      [[1, '{"a": 1}'], [2, "[ ]"], [3, "null"]],
    );
    await sql`drop table public.json_notes`;
  },
);

dbTest("merge re-inserts missing rows and leaves existing rows as they are", async () => {
  const snap = await takeSnapshot(sql, { tenantId: "101" });
  await sql`delete from public.lessons where tenant_id = 101 and body = 'Lesson 3'`;
  await sql`update public.lessons set body = 'kept' where tenant_id = 101 and body = 'Lesson 4'`;
  await sql`insert into public.lessons (tenant_id, body) values (101, 'extra')`;
  const status = await restore(snap.snapshot_id, "101", { strategy: "merge", tables: ["lessons"] });
  assert.equal(status.status, "completed", JSON.stringify(status.error));
  const bodies = (await sql<
    { body: string }[]
  >`select body from public.lessons where tenant_id = 101 order by body`)
    .map((r) => r.body);
  assert.deepEqual(
    bodies,
    ["Lesson 1", "Lesson 2", "Lesson 3", "Lesson 5", "extra", "kept"].sort(),
  );
  assert.equal((await restore(snap.snapshot_id, "101")).status, "completed");
});

dbTest(
  "a failure in a late table rolls the whole restore back and is recorded with its table",
  async () => {
    const before101 = await digest(101);
    const snap = await takeSnapshot(sql, { tenantId: "101" });
    await damage(101);
    await sql`delete from public.enrollments where tenant_id = 101`;
    const damaged = await digest(101);
    const other = await digest(102);
    // enrollments comes last in the order; a new check constraint rejects its snapshot rows.
    await sql`alter table public.enrollments add constraint enrollments_no_scores check (score is null) not valid`;
    try {
      const status = await restore(snap.snapshot_id, "101");
      assert.equal(status.status, "failed");
      assert.equal(status.error?.table, "public.enrollments");
      assert.equal(await digest(101), damaged);
      assert.equal(await digest(102), other);
    } finally {
      await sql`alter table public.enrollments drop constraint enrollments_no_scores`;
    }
    assert.equal((await restore(snap.snapshot_id, "101")).status, "completed");
    assert.equal(await digest(101), before101);
  },
);

dbTest("a snapshot altered behind the service's back fails validation and is refused", async () => {
  const snap = await takeSnapshot(sql, { tenantId: "102" });
  const users = snap.tables.find((t) => t.name === "public.users")!;
  assert.equal((await validateSnapshot(sql, snap.snapshot_id)).valid, true);
  const store = await storeOf(sql, users.id);
  await sql`update pitr_store.${sql(store.table)} set display_name = 'forged'
    where pitr_tenant = ${store.tenant} and email = (select min(email) from pitr_store.${
    sql(store.table)
  }
      where pitr_tenant = ${store.tenant})`;
  const v = await validateSnapshot(sql, snap.snapshot_id);
  assert.equal(v.valid, false);
  const bad = v.checks.find((c) => !c.ok)!;
  assert.equal(bad.check, "checksum");
  assert.equal(bad.table, "public.users");
  await sql`update public.users set display_name = 'live' where tenant_id = 102`;
  const d = await digest(102);
  const status = await restore(snap.snapshot_id, "102");
  assert.equal(status.status, "failed");
  assert.equal(status.error?.code, "snapshot_invalid");
  assert.equal(await digest(102), d);
});

dbTest(
  "a partial restore that would leave references dangling is refused unless the tables are included",
  async () => {
    const snap = await takeSnapshot(sql, { tenantId: "103" });
    await sql`delete from public.users where tenant_id = 103 and email = 'u1@t103.example'`; // cascades
    const d = await digest(103);
    const plan = await planRestore(sql, { snapshotId: snap.snapshot_id, tables: ["enrollments"] });
    const w = plan.warnings.find((x) => x.blocking)!;
    assert.equal(w.code, "references_outside_set");
    assert.match(w.message, /public\.users/);
    const status = await restore(snap.snapshot_id, "103", { tables: ["enrollments"] });
    assert.equal(status.status, "failed");
    assert.equal(status.error?.code, "plan_blocked");
    assert.equal(await digest(103), d);
    const ok = await restore(snap.snapshot_id, "103", {
      tables: ["enrollments", "users", "public.campaigns"],
    });
    assert.equal(ok.status, "completed", JSON.stringify(ok.error));
  },
);

dbTest(
  "a partial restore whose deletes would cascade into a table outside the set is refused",
  async () => {
    const snap = await takeSnapshot(sql, { tenantId: "103" });
    const [{ id: userId }] = await sql<{ id: string }[]>`
    insert into public.users (tenant_id, email) values (103, 'late@t103.example') returning id`;
    await sql`insert into public.enrollments (tenant_id, campaign_id, user_id)
    select 103, min(id), ${userId}::uuid from public.campaigns where tenant_id = 103`;
    const d = await digest(103);
    const plan = await planRestore(sql, { snapshotId: snap.snapshot_id, tables: ["users"] });
    const w = plan.warnings.find((x) => x.blocking)!;
    assert.equal(w.code, "cascade_outside_set");
    assert.match(w.message, /cascade into 1 rows of public\.enrollments/);
    const status = await restore(snap.snapshot_id, "103", { tables: ["users"] });
    assert.equal(status.error?.code, "plan_blocked");
    assert.equal(await digest(103), d);
    const ok = await restore(snap.snapshot_id, "103", { tables: ["users", "enrollments"] });
    assert.equal(ok.status, "completed", JSON.stringify(ok.error));
    const [{ n }] = await sql<
      { n: string }[]
    >`select count(*) as n from public.users where email = 'late@t103.example'`;
    assert.equal(Number(n), 0);
  },
);

dbTest("restored identity and serial values move their sequences forward", async () => {
  const snap = await takeSnapshot(sql, { tenantId: "103" });
  await sql`delete from public.lessons where tenant_id = 103`;
  await sql`alter sequence public.lessons_id_seq restart with 1`;
  assert.equal(
    (await restore(snap.snapshot_id, "103", { tables: ["lessons"] })).status,
    "completed",
  );
  const [{ id }] = await sql<
    { id: number }[]
  >`insert into public.lessons (tenant_id, body) values (103, 'fresh') returning id`;
  const [{ max }] = await sql<
    { max: number }[]
  >`select max(id) as max from public.lessons where body <> 'fresh'`;
  assert.ok(id > max);
  await sql`delete from public.lessons where body = 'fresh'`;
});

dbTest("one restore per tenant at a time, decided by the database", async () => {
  const snap = await takeSnapshot(sql, { tenantId: "103" });
  const first = await createRestore(sql, {
    snapshotId: snap.snapshot_id,
    tenantId: "103",
    strategy: "overwrite",
  });
  await assert.rejects(
    createRestore(sql, { snapshotId: snap.snapshot_id, tenantId: "103", strategy: "overwrite" }),
    (e) => e instanceof Conflict && e.code === "restore_in_progress",
  );
  assert.equal((await executeRestore(sql, first.id)).status, "completed");
  const again = await createRestore(sql, {
    snapshotId: snap.snapshot_id,
    tenantId: "103",
    strategy: "overwrite",
  });
  assert.equal((await executeRestore(sql, again.id)).status, "completed");
});

dbTest(
  "another tenant's write goes through while a restore holds its transaction open",
  async () => {
    const snap = await takeSnapshot(sql, { tenantId: "101" });
    await damage(101);
    let wrote = 0;
    await sql.begin(async (tx) => {
      await applySnapshot(tx, snap.snapshot_id, {
        strategy: "overwrite",
        onStep: async () => {
          // A separate session writes tenant 102 rows of the very tables being restored.
          await sql.begin(async (other) => {
            await other`set local lock_timeout = '2s'`;
            await other`update public.users set display_name = display_name where tenant_id = 102 and email = 'u5@t102.example'`;
            await other`insert into public.lessons (tenant_id, body) values (102, ${`during ${wrote}`})`;
          });
          wrote++;
        },
      });
    });
    assert.ok(wrote > 5);
    const [{ n }] = await sql<
      { n: string }[]
    >`select count(*) as n from public.lessons where tenant_id = 102 and body like 'during %'`;
    assert.equal(Number(n), wrote);
  },
);

dbTest(
  "a drill restores and verifies inside a transaction that is rolled back, and records it",
  async () => {
    await takeSnapshot(sql, { tenantId: "102", label: "for drill" });
    await sql`update public.users set display_name = 'drifted' where tenant_id = 102`;
    const d = await digest(102);
    const v = await versions(102);
    const [result] = await runDrills(sql, "102");
    assert.equal(result.ok, true, result.message);
    assert.ok(result.rows > 0);
    assert.equal(await digest(102), d);
    assert.equal(await versions(102), v);
    const [{ n }] = await sql<
      { n: string }[]
    >`select count(*) as n from public.backup_pitr_drills where tenant_id = '102' and ok`;
    assert.equal(Number(n), 1);
  },
);

dbTest("restores of different tenants run side by side", async () => {
  const a = await takeSnapshot(sql, { tenantId: "101" });
  const b = await takeSnapshot(sql, { tenantId: "102" });
  const da = await digest(101);
  const dbb = await digest(102);
  await damage(101);
  await damage(102);
  const [ra, rb] = await Promise.all([
    restore(a.snapshot_id, "101"),
    restore(b.snapshot_id, "102"),
  ]);
  assert.equal(ra.status, "completed", JSON.stringify(ra.error));
  assert.equal(rb.status, "completed", JSON.stringify(rb.error));
  assert.equal(await digest(101), da);
  assert.equal(await digest(102), dbb);
});

dbTest(
  "a second snapshot of an unchanged tenant stores no row; a changed row adds one version",
  async () => {
    const storedRows = async () => {
      let n = 0;
      for (
        const { store_table } of await sql<{ store_table: string }[]>`
        select store_table from pitr.backup_stores`
      ) {
        const [r] = await sql<{ n: string }[]>`select count(*) as n from pitr_store.${
          sql(store_table)
        }`;
        n += Number(r.n);
      }
      return n;
    };
    const first = await takeSnapshot(sql, { tenantId: "103" });
    const before = await storedRows();
    const second = await takeSnapshot(sql, { tenantId: "103" });
    assert.equal(await storedRows(), before);
    assert.deepEqual(
      second.tables.map((t) => [t.name, t.rows, t.checksum]),
      first.tables.map((t) => [t.name, t.rows, t.checksum]),
    );
    await sql`update public.lessons set body = 'one change' where tenant_id = 103 and body = 'Lesson 1'`;
    const third = await takeSnapshot(sql, { tenantId: "103" });
    assert.equal(await storedRows(), before + 1);
    assert.notEqual(
      third.tables.find((t) => t.name === "public.lessons")!.checksum,
      first.tables.find((t) => t.name === "public.lessons")!.checksum,
    );
    // Each snapshot still holds exactly its own rows, and dropping one keeps the others whole.
    await sql`select pitr.drop_snapshot(${second.snapshot_id})`;
    assert.equal((await validateSnapshot(sql, first.snapshot_id)).valid, true);
    assert.equal((await validateSnapshot(sql, third.snapshot_id)).valid, true);
    const status = await restore(first.snapshot_id, "103", { tables: ["lessons"] });
    assert.equal(status.status, "completed", JSON.stringify(status.error));
    const [{ body }] = await sql<{ body: string }[]>`
    select body from public.lessons where tenant_id = 103 order by id limit 1`;
    assert.equal(body, "Lesson 1");
  },
);

dbTest(
  "a stored row altered behind the service's back is never written by a merge or a selective restore either: the restore fails snapshot_invalid, nothing changed",
  async () => {
    // A merge verifies that the rows it adds are there, not their values: the recorded checksum
    // is what catches the forgery. (Last in this file: a tenant of its own moves the sequences the
    // tests above count on.)
    await sql`select public.seed_tenant(104, 8)`;
    const snap = await takeSnapshot(sql, { tenantId: "104" });
    const users = snap.tables.find((t) => t.name === "public.users")!;
    const store = await storeOf(sql, users.id);
    const [{ email }] = await sql<{ email: string }[]>`
      select min(email) as email from public.users where tenant_id = 104`;
    const [{ id }] = await sql<{ id: string }[]>`
      update pitr_store.${sql(store.table)} set display_name = 'forged'
      where pitr_tenant = ${store.tenant} and email = ${email} returning id`;
    await sql`delete from public.users where tenant_id = 104 and email = ${email}`;
    const d = await digest(104);
    const status = await restore(snap.snapshot_id, "104", {
      tables: ["users"],
      strategy: "merge",
    });
    assert.equal(status.status, "failed", JSON.stringify(status));
    assert.equal(status.error?.code, "snapshot_invalid");
    assert.equal(await digest(104), d);
    // A selective restore of that row verifies the rows chosen, as stored: the same.
    const chosen = await restoreSnapshot(sql, {
      snapshotId: snap.snapshot_id,
      tenantId: "104",
      strategy: "selective",
      selection: [{ table: "public.users", keys: [{ id }] }],
    });
    assert.equal(chosen.status, "failed", JSON.stringify(chosen));
    assert.equal(chosen.error?.code, "snapshot_invalid");
    assert.equal(await digest(104), d);
    assert.equal(
      (await sql`select from public.users where display_name = 'forged'`).length,
      0,
    );
  },
);

cleanup(db);
