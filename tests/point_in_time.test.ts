// True point in time: changes across several tables at known moments (cascading deletes, rows
// changed several times, keys changed, a TRUNCATE), then restores to points between them; each
// time the tenant's digest equals the one recorded at that moment, and other tenants are untouched.
import assert from "node:assert/strict";
import { createRestore } from "../shared/restore/history.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { planAt, snapshotAt, snapshotAtIn, validateAt } from "../shared/restore/point_in_time.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { BadRequest, Unprocessable } from "../shared/restore/errors.ts";
import { cleanup, clearMoment, dbTest, tenantDigest, testDatabase } from "./_db.ts";

const db = await testDatabase("pit");
const sql = db.sql;

const digest = (t: number) => tenantDigest(sql, t);
const now = () => clearMoment(sql);
async function restoreTo(tenant: string, at: string) {
  const snapshot = await snapshotAt(sql, { tenantId: tenant, at });
  const { id } = await createRestore(sql, {
    snapshotId: snapshot.snapshot_id,
    tenantId: tenant,
    strategy: "overwrite",
  });
  return await executeRestore(sql, id);
}

await sql`select public.seed_tenant(601, 20), public.seed_tenant(602, 20)`;
const beforeCapture = await now();
const tables = await sql<{ name: string }[]>`
  select format('%s.%s', table_schema, table_name) as name from pitr.protected_tables`;
for (const { name } of tables) await sql`select pitr.capture_enable(${name})`;

const moments: { at: string; digest: string }[] = [];
const mark = async () => moments.push({ at: await now(), digest: await digest(601) });

await mark(); // 0: as seeded
await sql`update public.lessons set body = body || ' v2' where tenant_id = 601`;
await sql`update public.users set display_name = 'first edit', profile = '{"edited": 1}' where tenant_id = 601 and email like 'u1%'`;
await mark(); // 1
await sql`delete from public.users where tenant_id = 601 and email in ('u1@t601.example', 'u2@t601.example')`; // cascades
await sql`update public.lessons set body = body || ' v3' where tenant_id = 601`;
await sql`update public.lessons set id = id + 100000 where tenant_id = 601 and body like 'Lesson 1%'`;
await sql`update public.users set display_name = 'second edit' where tenant_id = 602`;
await mark(); // 2
await sql`insert into public.users (tenant_id, email, display_name) values (601, 'new@t601.example', 'new')`;
await sql`update public.users set display_name = 'edited again', mood = 'panic' where tenant_id = 601 and email = 'new@t601.example'`;
await sql`update public.campaigns set title = 'bad import', budget = null where tenant_id = 601`;
await sql`delete from crm.contacts where org = '601'`;
await sql`update public.quizzes set first_question = null where tenant_id = 601`;
await sql`delete from public.questions where tenant_id = 601`;
await mark(); // 3
await sql`truncate public."Audit Log"`; // recorded as deletes of every tenant's rows
await sql`update public.tenants set name = 'renamed' where id = 601`;
await mark(); // 4

dbTest(
  "each moment's digest differs from the others (the scenario changes something each time)",
  () => {
    assert.equal(new Set(moments.map((m) => m.digest)).size, moments.length);
    return Promise.resolve();
  },
);

dbTest(
  "restores to every recorded moment give exactly the digest recorded then; other tenants untouched",
  async () => {
    const other = await digest(602);
    for (const i of [1, 0, 3, 2, 4, 0]) {
      const status = await restoreTo("601", moments[i].at);
      assert.equal(status.status, "completed", `moment ${i}: ${JSON.stringify(status.error)}`);
      assert.equal(await digest(601), moments[i].digest, `moment ${i}`);
      assert.equal(await digest(602), other, `tenant 602 after moment ${i}`);
    }
  },
);

dbTest(
  "a restore to a moment after an earlier restore accounts for the restore's own changes",
  async () => {
    const afterAll = await now();
    const stateThen = await digest(601);
    await sql`update public.lessons set body = 'later' where tenant_id = 601`;
    assert.equal((await restoreTo("601", afterAll)).status, "completed");
    assert.equal(await digest(601), stateThen);
  },
);

dbTest("a point-in-time plan counts the changes and changes nothing", async () => {
  const before = await digest(601);
  const [{ n }] = await sql<{ n: string }[]>`select count(*) as n from public.backup_snapshots`;
  // The tenant is as at moment 0 now; moment 3 had its contacts deleted.
  const plan = await planAt(sql, { tenantId: "601", at: moments[3].at });
  assert.equal(plan.at, moments[3].at);
  assert.equal(plan.tables.find((t) => t.table === "crm.contacts")!.delete, 2);
  assert.ok(plan.tables.find((t) => t.table === "public.campaigns")!.update > 0);
  assert.equal(await digest(601), before);
  const [{ n: after }] = await sql<
    { n: string }[]
  >`select count(*) as n from public.backup_snapshots`;
  assert.equal(after, n);
});

dbTest(
  "a point-in-time preview holds no lock of the tenant: a snapshot and a restore go through meanwhile",
  async () => {
    // The preview is what planAt builds; it is held open here as a slow plan would be.
    const session = await sql.reserve();
    try {
      await session`begin isolation level repeatable read`;
      await snapshotAtIn(session, { tenantId: "602", at: moments[1].at }, { preview: true });
      const started = performance.now();
      const s = await takeSnapshot(sql, { tenantId: "602" });
      const { id } = await createRestore(sql, {
        snapshotId: s.snapshot_id,
        tenantId: "602",
        strategy: "overwrite",
      });
      const status = await executeRestore(sql, id);
      assert.equal(status.status, "completed", JSON.stringify(status.error));
      // Nothing waited for the preview's transaction (the lock waits are 5 s and 30 s).
      assert.ok(performance.now() - started < 4000);
    } finally {
      await session`rollback`;
      session.release();
    }
  },
);

dbTest(
  "a moment before capture began, or in the future, is refused and changes nothing",
  async () => {
    const before = await digest(601);
    const v = await validateAt(sql, { tenantId: "601", at: beforeCapture });
    assert.equal(v.valid, false);
    assert.match(v.checks.find((c) => !c.ok)!.message, /captured only since/);
    await assert.rejects(
      snapshotAt(sql, { tenantId: "601", at: beforeCapture }),
      (e) => e instanceof Unprocessable && e.code === "no_change_log",
    );
    await assert.rejects(
      planAt(sql, { tenantId: "601", at: "2999-01-01T00:00:00Z" }),
      (e) => e instanceof BadRequest,
    );
    await assert.rejects(
      planAt(sql, { tenantId: "601", at: "yesterday" }),
      (e) => e instanceof BadRequest,
    );
    assert.equal((await validateAt(sql, { tenantId: "601", at: moments[1].at })).valid, true);
    assert.equal(await digest(601), before);
  },
);

dbTest(
  "a row that has since moved to another tenant is not taken back: the restore is refused",
  async () => {
    const at = await now();
    const d = await digest(601);
    const other = await digest(602);
    const [{ id }] = await sql<{ id: number }[]>`update public.lessons set tenant_id = 602
    where tenant_id = 601 and body like 'Lesson 5%' returning id`;
    const status = await restoreTo("601", at);
    assert.equal(status.status, "failed");
    // The preview says why; the restore itself fails on the key and rolls back.
    const plan = await planAt(sql, { tenantId: "601", at });
    assert.match(plan.warnings.find((w) => w.blocking)!.message, /held by another tenant/);
    assert.equal(status.error?.code, "key_conflict");
    assert.equal(status.error?.table, "public.lessons");
    assert.notEqual(await digest(601), d);
    await sql`update public.lessons set tenant_id = 601 where id = ${id}`;
    assert.equal(await digest(602), other);
    assert.equal((await restoreTo("601", at)).status, "completed");
    assert.equal(await digest(601), d);
  },
);

dbTest(
  "capture does not change the application's rows, and disable removes its triggers",
  async () => {
    await sql`create table public.capture_probe (id int primary key, tenant_id text, v text, touched timestamptz)`;
    await sql`insert into public.capture_probe values (1, 'x', 'a', null)`;
    await sql`select pitr.capture_enable('capture_probe')`;
    await sql`update public.capture_probe set v = 'b'`;
    const rows = await sql`select * from public.capture_probe`;
    assert.deepEqual(rows.map((r) => ({ ...r })), [{
      id: 1,
      tenant_id: "x",
      v: "b",
      touched: null,
    }]);
    const [{ n }] = await sql<{ n: string }[]>`select count(*) as n from pitr.changes
    where relid = 'public.capture_probe'::regclass`;
    assert.equal(Number(n), 1);
    await sql`select pitr.capture_disable('capture_probe')`;
    const [{ t }] = await sql<{ t: string }[]>`select count(*) as t from pg_trigger
    where tgrelid = 'public.capture_probe'::regclass and tgname like 'pitr_capture%'`;
    assert.equal(Number(t), 0);
    await sql`drop table public.capture_probe`;
  },
);

dbTest("retention drops whole expired days and records from when the log is complete", async () => {
  await sql`create table pitr.changes_20200101 partition of pitr.changes
    for values from ('2020-01-01 00:00+00') to ('2020-01-02 00:00+00')`;
  await sql`insert into pitr.changes (changed_at, tenant_id, relid, op, pk)
    values ('2020-01-01 12:00+00', '601', 'public.lessons'::regclass, 'I', '-1')`;
  const [{ dropped }] = await sql<
    { dropped: number }[]
  >`select pitr.drop_expired_changes() as dropped`;
  assert.equal(dropped, 1);
  const [{ gone }] = await sql<
    { gone: boolean }[]
  >`select to_regclass('pitr.changes_20200101') is null as gone`;
  assert.equal(gone, true);
  const [{ since }] = await sql<
    { since: Date }[]
  >`select complete_since as since from pitr.settings`;
  // A second after the dropped day: a transaction that began on it may have committed after it.
  assert.equal(since.toISOString(), "2020-01-02T00:00:01.000Z");
  await assert.rejects(
    planAt(sql, { tenantId: "601", at: "2020-01-01T18:00:00Z" }),
    (e) => e instanceof Unprocessable && e.code === "outside_retention",
  );
});

dbTest("a moment keeps its microseconds: capture enabled at T covers T exactly", async () => {
  const [{ at }] = await sql<{ at: string }[]>`
    select to_char(enabled_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as at
    from pitr.capture_tables where relid = 'public.lessons'::regclass`;
  assert.notEqual(at.slice(20, 26), "000000");
  const v = await validateAt(sql, { tenantId: "601", at, tables: ["lessons"] });
  assert.equal(v.valid, true, JSON.stringify(v.checks));
});

cleanup(db);
