// Retention (pitr.apply_retention): which snapshots the policy keeps, that it frees exactly the
// row versions no kept snapshot covers, and that kept snapshots still restore exactly.
import assert from "node:assert/strict";
import { connect } from "../shared/db/client.ts";
import { createRestore } from "../shared/restore/history.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { applyRetention, expiredSnapshots } from "../shared/restore/retention.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { cleanup, dbTest, tenantDigest, testDatabase } from "./_db.ts";

const db = await testDatabase("retention");
const sql = db.sql;

await sql`select public.seed_tenant(201, 30), public.seed_tenant(202, 10), public.seed_tenant(203, 10),
  public.seed_tenant(204, 10)`;

/** A moment `days` whole days before today's UTC midnight, plus `hours`: clear of day edges. */
async function moment(days: number, hours: number): Promise<Date> {
  const [{ t }] = await sql<{ t: Date }[]>`
    select date_trunc('day', now() at time zone 'UTC') at time zone 'UTC'
      - make_interval(days => ${days}) + make_interval(hours => ${hours}) as t`;
  return t;
}

/** The same, counted from the start (Monday) of this ISO week, `weeks` weeks back. */
async function weekMoment(weeks: number, days: number): Promise<Date> {
  const [{ t }] = await sql<{ t: Date }[]>`
    select date_trunc('week', now() at time zone 'UTC') at time zone 'UTC'
      - make_interval(weeks => ${weeks}) + make_interval(days => ${days}, hours => 10) as t`;
  return t;
}

/** Changes a few of tenant 201's users, so that each snapshot stores versions of its own. */
async function touch(tenant: number, round: number) {
  await sql`update public.users set display_name = ${`round ${round}`}
    where tenant_id = ${tenant} and email in (${`u${round}@t${tenant}.example`},
      ${`u${round + 10}@t${tenant}.example`})`;
}

async function snapshotAt(tenant: number, at: Date, label: string): Promise<string> {
  const s = await takeSnapshot(sql, { tenantId: String(tenant), label });
  await sql`update public.backup_snapshots set created_at = ${at} where id = ${s.snapshot_id}`;
  return s.snapshot_id;
}

async function labels(tenant: number): Promise<string[]> {
  const rows = await sql<{ label: string }[]>`select label from public.backup_snapshots
    where tenant_id = ${String(tenant)} order by seq`;
  return rows.map((r) => r.label);
}

/** Store versions of a tenant, in every store. */
async function storeRows(tenant: number): Promise<number> {
  let n = 0;
  for (
    const { store_table } of await sql<{ store_table: string }[]>`
    select store_table from pitr.backup_stores`
  ) {
    const [r] = await sql<{ n: string }[]>`select count(*) as n
      from pitr_store.${sql(store_table)} where pitr_tenant = ${String(tenant)}`;
    n += Number(r.n);
  }
  return n;
}

/** Versions of a tenant that its open head or one of its snapshots (now) covers. */
async function coveredRows(tenant: number): Promise<number> {
  let n = 0;
  for (
    const { id, store_table } of await sql<{ id: string; store_table: string }[]>`
    select id, store_table from pitr.backup_stores`
  ) {
    const [r] = await sql<{ n: string }[]>`select count(*) as n
      from pitr_store.${sql(store_table)} s where s.pitr_tenant = ${String(tenant)}
        and (s.pitr_to is null or exists (select from pitr.backup_snapshot_tables t
          where t.store_id = ${id} and t.store_tenant = s.pitr_tenant
            and t.seq >= s.pitr_from and t.seq < s.pitr_to))`;
    n += Number(r.n);
  }
  return n;
}

async function restoreTo(snapshotId: string, tenant: number) {
  const { id } = await createRestore(sql, {
    snapshotId,
    tenantId: String(tenant),
    strategy: "overwrite",
  });
  const status = await executeRestore(sql, id);
  assert.equal(status.status, "completed", JSON.stringify(status.error));
  return status;
}

// Tenant 201: manual snapshots across the tiers (default policy: all for 7 days, the newest of
// each day until 30 days, the newest of each week until 13 weeks), oldest first.
const digests = new Map<string, string>();
const plan: [string, () => Promise<Date>][] = [
  ["ancient", () => weekMoment(16, 2)], // older than 13 weeks: dropped
  ["week-tue", () => weekMoment(6, 1)], // same week as week-thu, older: dropped
  ["week-thu", () => weekMoment(6, 3)], // newest of its week: kept
  ["day-morning", () => moment(20, 8)], // same day as day-evening, older: dropped
  ["day-evening", () => moment(20, 20)], // newest of its day: kept
  ["recent-1", () => moment(3, 8)], // younger than 7 days: kept
  ["recent-2", () => moment(3, 9)], // younger than 7 days: kept
];
const ids = new Map<string, string>();
for (const [i, [label, at]] of plan.entries()) {
  await touch(201, i + 1);
  ids.set(label, await snapshotAt(201, await at(), label));
  digests.set(label, await tenantDigest(sql, 201));
}

dbTest("the policy expires what each tier does not keep, and nothing else", async () => {
  // Undo and point-in-time snapshots: kept for 7 days.
  const undoOld = await snapshotAt(202, await moment(9, 12), "undo-old");
  const undoNew = await snapshotAt(202, await moment(2, 12), "undo-new");
  await sql`update public.backup_snapshots set kind = 'undo' where id in (${undoOld}, ${undoNew})`;
  const expired = await expiredSnapshots(sql);
  const byId = new Map(expired.map((e) => [e.id, e.reason]));
  assert.equal(byId.get(ids.get("ancient")!), "older than retain_weekly");
  assert.equal(byId.get(ids.get("week-tue")!), "not the newest of its week");
  assert.equal(byId.get(ids.get("day-morning")!), "not the newest of its day");
  assert.equal(byId.get(undoOld), "older than retain_undo");
  assert.equal(expired.length, 4, JSON.stringify(expired));
  assert.equal(byId.has(undoNew), false);
});

dbTest(
  "retention drops the expired snapshots and frees exactly the versions none covers",
  async () => {
    const before = await storeRows(201);
    const dropped = await applyRetention(sql, { batch: 1 }); // one a transaction
    assert.equal(dropped, 4);
    assert.deepEqual(await labels(201), ["week-thu", "day-evening", "recent-1", "recent-2"]);
    assert.deepEqual(await labels(202), ["undo-new"]);
    const after = await storeRows(201);
    assert.ok(after < before, `store rows ${before} -> ${after}`);
    assert.equal(after, await coveredRows(201), "every version left is covered by a kept snapshot");
    assert.equal(await applyRetention(sql), 0, "a second run finds nothing to drop");
    const [{ ran }] = await sql<
      { ran: Date | null }[]
    >`select retention_ran_at as ran from pitr.settings`;
    assert.ok(ran !== null);
  },
);

dbTest("the kept snapshots still restore exactly after retention", async () => {
  for (const label of ["week-thu", "day-evening", "recent-1"]) {
    await restoreTo(ids.get(label)!, 201);
    assert.equal(await tenantDigest(sql, 201), digests.get(label), label);
  }
});

dbTest("a tenant's newest snapshot and its newest drilled-good one are never dropped", async () => {
  const good = await snapshotAt(203, await moment(200, 12), "good");
  await touch(203, 1);
  const bad = await snapshotAt(203, await moment(150, 12), "bad");
  await touch(203, 2);
  const newest = await snapshotAt(203, await moment(120, 12), "newest");
  await sql`insert into public.backup_pitr_drills
      (tenant_id, snapshot_id, ok, duration_ms, message, created_at)
    values ('203', ${good}, true, 5, 'ok', now() - interval '2 hours'),
      ('203', ${bad}, true, 5, 'ok', now() - interval '1 hour'),
      ('203', ${bad}, false, 5, 'failed later', now())`;
  await applyRetention(sql);
  const left = (await sql<{ id: string }[]>`select id from public.backup_snapshots
    where tenant_id = '203'`).map((r) => r.id).sort();
  assert.deepEqual(left, [good, newest].sort());
  assert.equal(await storeRows(203), await coveredRows(203));
  await restoreTo(good, 203);
  await restoreTo(newest, 203);
});

dbTest("snapshots a restore names and tenants busy elsewhere are left alone", async () => {
  const source = await snapshotAt(204, await moment(200, 12), "source");
  await touch(204, 1);
  const pendingUndo = await snapshotAt(204, await moment(190, 12), "pending-undo");
  await touch(204, 2);
  await snapshotAt(204, await moment(1, 12), "newest");
  // A restore still pending from `source`, whose record names `pending-undo` as its undo.
  const { id: restoreId } = await createRestore(sql, {
    snapshotId: source,
    tenantId: "204",
    strategy: "overwrite",
  });
  await sql`update public.backup_pitr_rollback_history set undo_snapshot_id = ${pendingUndo}
    where id = ${restoreId}`;
  await applyRetention(sql);
  assert.deepEqual(await labels(204), ["source", "pending-undo", "newest"]);

  // Finished: its undo may go (its source stays, named by the record), unless another session
  // holds the tenant's lock.
  await sql`update public.backup_pitr_rollback_history set status = 'cancelled' where id = ${restoreId}`;
  const other = connect(db.url, { max: 1, sessions: 0 });
  try {
    await other.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(hashtext('pitr:tenant'), hashtext('204'))`;
      assert.equal(await applyRetention(sql), 0);
      assert.deepEqual(await labels(204), ["source", "pending-undo", "newest"]);
    });
  } finally {
    await other.end({ timeout: 5 });
  }
  assert.equal(await applyRetention(sql), 1);
  assert.deepEqual(await labels(204), ["source", "newest"]);
  assert.equal(await storeRows(204), await coveredRows(204));
});

cleanup(db);
