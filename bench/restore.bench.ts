// `deno task bench [--quick]`: measures the restore engine against what PostgreSQL does with the
// same rows (issue 4), in a fresh database it drops at the end. It must never assert a goal.
import { configuredDatabaseUrl, connect, type Sql, withDatabase } from "../shared/db/client.ts";
import { startEmbedded } from "../shared/db/embedded.ts";
import { migrate } from "../shared/db/migrate.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { createRestore } from "../shared/restore/history.ts";
import { planRestore } from "../shared/restore/plan.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { CopyFiles, copyIn, copyOut, removeFiles } from "./baseline.ts";
import {
  applyDrift,
  createSchema,
  deleteTenant,
  loadTenant,
  rowsOf,
  scaled,
  type Sizes,
  sourceBytesPerRow,
  vacuum,
} from "./dataset.ts";
import { OtherTenantWriter } from "./other_tenant.ts";
import { type Figure, type InfoRow, printReport } from "./report.ts";
import {
  fmt,
  fmtSummary,
  MB,
  peakRss,
  percentile,
  ratioSpread,
  summarise,
  type Summary,
  timed,
} from "./stats.ts";

const quick = Deno.args.includes("--quick");
// Five where it is not --quick: this kind of shared machine moves a single figure by 1.5x.
const REPS = quick ? 3 : 5;
/** The 1,110,000-row tenant's restores (memory, and 1% drift) take 20-30 s each: three. */
const BIG_REPS = 3;
const TENANTS = quick ? 3 : 10;
const SIZES: Sizes = quick
  ? { users: 1_000, campaigns: 100, enrollments: 10_000 }
  : { users: 10_000, campaigns: 1_000, enrollments: 100_000 };
/** The tenant with ten times the rows, for the memory figure. */
const BIG_TENANT = 100;
const BIG_SIZES = scaled(SIZES, 10);
/** The tenant measured, and the other tenant whose writes go on during its restores. */
const MEASURED = 1;
const OTHER = 2;

const log = (msg: string) => console.error(`[bench] ${msg}`);

/** Undo snapshots of the restores measured, dropped once each measurement has ended. */
const undos: string[] = [];

/** A restore as the API runs it: record it, execute it; anything but completed is a failure. */
async function restore(sql: Sql, snapshotId: string, tenant: number): Promise<void> {
  const { id } = await createRestore(sql, {
    snapshotId,
    tenantId: String(tenant),
    strategy: "overwrite",
  });
  const status = await executeRestore(sql, id);
  if (status.status !== "completed") {
    throw new Error(`restore ${id} ended ${status.status}: ${JSON.stringify(status.error)}`);
  }
  // Taking the undo snapshot is part of the restore's cost; keeping it would only grow the store,
  // so it is dropped after the measurement (dropUndos), as retention would days later. The drop
  // used to be timed with the restore: 50-300 ms of a drift restore, growing with the closed
  // versions the tenant had accumulated in the run.
  if (status.undo_snapshot_id) undos.push(status.undo_snapshot_id);
}

async function dropUndos(sql: Sql): Promise<void> {
  for (const id of undos.splice(0)) await sql`select pitr.drop_snapshot(${id})`;
}

/** Bytes of every store in pitr_store, indexes included. */
async function storeBytes(sql: Sql): Promise<number> {
  const [r] = await sql<{ bytes: string }[]>`
    select coalesce(sum(pg_total_relation_size(c.oid)), 0) as bytes
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'pitr_store' and c.relkind = 'r'`;
  return Number(r.bytes);
}

/** Rewrites every store without its free space (VACUUM FULL). */
async function compactStores(sql: Sql): Promise<void> {
  for (
    const { store_table } of await sql<{ store_table: string }[]>`
      select store_table from pitr.backup_stores`
  ) {
    await sql`vacuum full ${sql("pitr_store." + store_table)}`;
  }
}

/**
 * Drops every snapshot of a tenant and the row versions kept for its next one, so that the
 * next snapshot is a first one (a full copy) again.
 */
async function forgetSnapshots(sql: Sql, tenant: number): Promise<void> {
  const id = String(tenant);
  for (
    const { id: snap } of await sql`select id from public.backup_snapshots where tenant_id = ${id}`
  ) {
    await sql`select pitr.drop_snapshot(${snap})`;
  }
  for (
    const { store_table } of await sql<{ store_table: string }[]>`
      select store_table from pitr.backup_stores`
  ) {
    // Open and closed versions apart, each by its own index.
    await sql`delete from pitr_store.${sql(store_table)}
      where pitr_tenant = ${id} and pitr_to is null`;
    await sql`delete from pitr_store.${sql(store_table)}
      where pitr_tenant = ${id} and pitr_to is not null`;
  }
  await sql`delete from pitr.backup_store_heads where tenant_id = ${id}`;
}

async function tenantRows(sql: Sql, tenant: number): Promise<number> {
  const [r] = await sql<{ n: string }[]>`select
    (select count(*) from public.users where tenant_id = ${tenant})
    + (select count(*) from public.campaigns where tenant_id = ${tenant})
    + (select count(*) from public.enrollments where tenant_id = ${tenant}) as n`;
  return Number(r.n);
}

function expectRows(what: string, got: number, want: number) {
  if (got !== want) throw new Error(`${what}: ${got} rows, expected ${want}`);
}

interface Report {
  figures: Figure[];
  header: string[];
  info: InfoRow[];
}

async function run(sql: Sql, url: string, files: CopyFiles): Promise<Report> {
  const rows = rowsOf(SIZES);
  const bigRows = rowsOf(BIG_SIZES);

  // The dataset.
  const load = await timed(async () => {
    await migrate(sql);
    await createSchema(sql);
    for (let t = 1; t <= TENANTS; t++) await loadTenant(sql, t, SIZES);
    await loadTenant(sql, BIG_TENANT, BIG_SIZES);
    await vacuum(sql);
  });
  const source = await sourceBytesPerRow(sql);
  log(
    `loaded ${TENANTS} tenants of ${fmt(rows)} rows and one of ${fmt(bigRows)} ` +
      `(${fmt(source.rows)} rows, ${fmt(source.bytes / MB)} MB) in ${load.seconds.toFixed(1)} s`,
  );

  // 1. Snapshot vs COPY TO; one warm-up of each first, not counted. Each measured snapshot is a
  // tenant's first (a full copy); a repeated snapshot, which stores only what changed, is
  // measured too.
  await copyOut(sql, MEASURED, files);
  await takeSnapshot(sql, { tenantId: String(MEASURED) });
  const copyTo: number[] = [];
  const snap: number[] = [];
  const repeat: number[] = [];
  for (let i = 0; i < REPS; i++) {
    const c = await timed(() => copyOut(sql, MEASURED, files));
    expectRows("COPY TO", c.value, rows);
    copyTo.push(c.seconds);
    await forgetSnapshots(sql, MEASURED);
    await vacuum(sql);
    const s = await timed(() => takeSnapshot(sql, { tenantId: String(MEASURED) }));
    expectRows("snapshot", s.value.total_rows, rows);
    snap.push(s.seconds);
    const again = await timed(() => takeSnapshot(sql, { tenantId: String(MEASURED) }));
    expectRows("repeated snapshot", again.value.total_rows, rows);
    repeat.push(again.seconds);
  }
  log(
    `snapshot ${fmtSummary(summarise(snap), "s")}, repeated ${
      fmtSummary(summarise(repeat), "s")
    }, ` +
      `COPY TO ${fmtSummary(summarise(copyTo), "s")}`,
  );

  // 5, 6. Storage: what the tenant's first snapshot adds to the stores, against the source; what
  // a second one (nothing changed in between) adds, against the first.
  await forgetSnapshots(sql, MEASURED);
  await vacuum(sql);
  // Compacted first: the free space that the forgotten versions left (once autovacuum has been
  // by) would take the new rows and hide their size.
  await compactStores(sql);
  const empty = await storeBytes(sql);
  const first = await takeSnapshot(sql, { tenantId: String(MEASURED) });
  const firstBytes = (await storeBytes(sql)) - empty;
  await takeSnapshot(sql, { tenantId: String(MEASURED) });
  const secondBytes = (await storeBytes(sql)) - empty - firstBytes;

  // 2 (and the 100k side of 7). Full restore of the emptied tenant vs COPY FROM the same rows.
  const copyFrom: number[] = [];
  const full: number[] = [];
  const rssSmall: number[] = [];
  let rssFloor = Infinity;
  for (let i = 0; i < REPS; i++) {
    await deleteTenant(sql, MEASURED);
    await vacuum(sql);
    const c = await timed(() => copyIn(sql, files));
    expectRows("COPY FROM", c.value, rows);
    copyFrom.push(c.seconds);

    await deleteTenant(sql, MEASURED);
    await vacuum(sql);
    const r = await timed(() => peakRss(() => restore(sql, first.snapshot_id, MEASURED)));
    await dropUndos(sql);
    full.push(r.seconds);
    rssSmall.push(r.value.peak);
    rssFloor = Math.min(rssFloor, r.value.before);
    expectRows("after the full restore", await tenantRows(sql, MEASURED), rows);
  }
  log(
    `full restore ${fmtSummary(summarise(full), "s")}, COPY FROM ` +
      fmtSummary(summarise(copyFrom), "s"),
  );

  // 3, 4. 5% drift since the tenant's latest snapshot (a bad import, a mistaken bulk update, found
  // the next day): plan it (the diff), then restore it. The snapshot taken before each drift is
  // not timed: it is the nightly snapshot the damage happened after.
  const plan: number[] = [];
  const drift: number[] = [];
  let drifted = 0;
  let planned = "";
  for (let i = 0; i < REPS; i++) {
    const latest = await takeSnapshot(sql, { tenantId: String(MEASURED) });
    drifted = await applyDrift(sql, MEASURED, SIZES);
    await vacuum(sql);
    const p = await timed(() => planRestore(sql, { snapshotId: latest.snapshot_id }));
    const t = p.value.totals;
    if (t.insert + t.update + t.delete === 0) {
      throw new Error("the plan of a drifted tenant is empty");
    }
    planned =
      `insert ${t.insert}, update ${t.update}, delete ${t.delete}, unchanged ${t.unchanged}`;
    plan.push(p.seconds);
    const r = await timed(() => restore(sql, latest.snapshot_id, MEASURED));
    await dropUndos(sql);
    drift.push(r.seconds);
    expectRows("after the drift restore", await tenantRows(sql, MEASURED), rows);
  }
  log(`drift of ${drifted} rows (${((100 * drifted) / rows).toFixed(1)}%), plan: ${planned}`);
  log(
    `plan ${fmtSummary(summarise(plan), "s")}, drift restore ${fmtSummary(summarise(drift), "s")}`,
  );
  // The same drift restored to an older snapshot (the tenant snapshotted since): its undo needs
  // a pass of its own over the tenant's rows, since the head no longer holds the target.
  const olderDrift: number[] = [];
  for (let i = 0; i < REPS; i++) {
    await applyDrift(sql, MEASURED, SIZES);
    await vacuum(sql);
    olderDrift.push((await timed(() => restore(sql, first.snapshot_id, MEASURED))).seconds);
    await dropUndos(sql);
  }
  log(`drift restore to an older snapshot ${fmtSummary(summarise(olderDrift), "s")}`);

  // How a drift restore grows with the drift: each share restored to the snapshot just before it.
  const scaling: { what: string; restore: Summary; full: Summary }[] = [];
  const driftRestore = async (tenant: number, sizes: Sizes, pct: number, reps = REPS) => {
    const times: number[] = [];
    let touched = 0;
    for (let i = 0; i < reps; i++) {
      const latest = await takeSnapshot(sql, { tenantId: String(tenant) });
      touched = await applyDrift(sql, tenant, sizes, pct);
      await vacuum(sql);
      times.push((await timed(() => restore(sql, latest.snapshot_id, tenant))).seconds);
      await dropUndos(sql);
    }
    return { touched, times: summarise(times) };
  };
  for (const pct of [0.1, 1, 5, 20]) {
    const d = await driftRestore(MEASURED, SIZES, pct);
    scaling.push({
      what: `${pct}% of ${fmt(rows)} rows (${fmt(d.touched)} touched)`,
      restore: d.times,
      full: summarise(full),
    });
  }
  log(`drift scaling on ${fmt(rows)} rows done`);

  // 7. Memory of this process during the restore of the big tenant.
  const big = await takeSnapshot(sql, { tenantId: String(BIG_TENANT) });
  expectRows("big snapshot", big.total_rows, bigRows);
  const rssBig: number[] = [];
  const bigRestore: number[] = [];
  for (let i = 0; i < BIG_REPS; i++) {
    await deleteTenant(sql, BIG_TENANT);
    await vacuum(sql);
    const r = await timed(() => peakRss(() => restore(sql, big.snapshot_id, BIG_TENANT)));
    await dropUndos(sql);
    rssBig.push(r.value.peak);
    rssFloor = Math.min(rssFloor, r.value.before);
    bigRestore.push(r.seconds);
    expectRows("after the big restore", await tenantRows(sql, BIG_TENANT), bigRows);
  }
  log(`big restore ${fmtSummary(summarise(bigRestore), "s")}`);
  {
    const d = await driftRestore(BIG_TENANT, BIG_SIZES, 1, BIG_REPS);
    scaling.push({
      what: `1% of ${fmt(bigRows)} rows (${fmt(d.touched)} touched)`,
      restore: d.times,
      full: summarise(bigRestore),
    });
  }

  // 8. Another tenant's single-row updates, alone and during a full restore.
  const writer = await OtherTenantWriter.open(url, OTHER);
  const p99Alone: number[] = [];
  const p99During: number[] = [];
  // The same during PostgreSQL's own COPY FROM of the same rows: what writing them costs the
  // other tenant's commits, whoever writes them.
  const p99Copy: number[] = [];
  let updatesDuring = 0;
  const window = Math.max(1, summarise(full).median);
  try {
    await writer.run({ maxCount: 200, maxSeconds: 2 }); // warm-up
    for (let i = 0; i < REPS; i++) {
      const alone = await writer.run({ maxCount: 20_000, maxSeconds: window });
      p99Alone.push(percentile(alone, 99));

      await deleteTenant(sql, MEASURED);
      await vacuum(sql);
      let done = false;
      const restoring = restore(sql, first.snapshot_id, MEASURED).finally(() => done = true);
      const [during] = await Promise.all([
        writer.run({ maxCount: 20_000, maxSeconds: 10 * window + 60, stop: () => done }),
        restoring,
      ]);
      await dropUndos(sql);
      if (during.length === 0) {
        throw new Error("no update of the other tenant ran during a restore");
      }
      updatesDuring += during.length;
      p99During.push(percentile(during, 99));

      await deleteTenant(sql, MEASURED);
      await vacuum(sql);
      let copied = false;
      const copying = copyIn(sql, files).finally(() => copied = true);
      const [duringCopy, n] = await Promise.all([
        writer.run({ maxCount: 20_000, maxSeconds: 10 * window + 60, stop: () => copied }),
        copying,
      ]);
      expectRows("COPY FROM during the other tenant's writes", n, rows);
      if (duringCopy.length > 0) p99Copy.push(percentile(duringCopy, 99));
    }
  } finally {
    await writer.close();
  }
  log(
    `other tenant p99 alone ${fmtSummary(summarise(p99Alone), "ms")}, during ` +
      `${fmtSummary(summarise(p99During), "ms")} (${
        Math.round(updatesDuring / REPS)
      } updates a restore), during COPY FROM ${fmtSummary(summarise(p99Copy), "ms")}`,
  );

  // The figures.
  const s = (xs: number[]) => summarise(xs);
  const perSecond = (n: number, xs: number[]) => s(xs.map((x) => n / x));
  const mb = (xs: number[]) => s(xs.map((x) => x / MB));
  const sourcePerRow = source.bytes / source.rows;
  const firstPerRow = firstBytes / first.total_rows;
  const figures: Figure[] = [
    {
      key: "snapshot_vs_copy",
      figure: `snapshot of one tenant (${fmt(rows)} rows), rows/s`,
      engine: fmtSummary(perSecond(rows, snap)),
      baseline: "COPY TO binary " + fmtSummary(perSecond(rows, copyTo)),
      ratio: perSecond(rows, snap).median / perSecond(rows, copyTo).median,
      spread: ratioSpread(perSecond(rows, snap), perSecond(rows, copyTo)),
    },
    {
      key: "restore_vs_copy",
      figure: "full restore of an emptied tenant, rows/s (verified)",
      engine: fmtSummary(perSecond(rows, full)),
      baseline: "COPY FROM binary, replica " + fmtSummary(perSecond(rows, copyFrom)),
      ratio: perSecond(rows, full).median / perSecond(rows, copyFrom).median,
      spread: ratioSpread(perSecond(rows, full), perSecond(rows, copyFrom)),
    },
    {
      key: "drift_vs_full",
      figure: `restore of a 5% drift (${drifted} rows), s`,
      engine: fmtSummary(s(drift)),
      baseline: "full restore " + fmtSummary(s(full)),
      ratio: s(drift).median / s(full).median,
      spread: ratioSpread(s(drift), s(full)),
    },
    {
      key: "plan_vs_copy",
      figure: "plan (diff) of one tenant, s",
      engine: fmtSummary(s(plan)),
      baseline: "COPY TO " + fmtSummary(s(copyTo)),
      ratio: s(plan).median / s(copyTo).median,
      spread: ratioSpread(s(plan), s(copyTo)),
    },
    {
      key: "storage_vs_source",
      figure: "snapshot storage, bytes/row",
      engine: fmt(firstPerRow),
      baseline: `source tables ${fmt(sourcePerRow)}`,
      ratio: firstPerRow / sourcePerRow,
    },
    {
      key: "second_snapshot_vs_first",
      figure: "second snapshot of an unchanged tenant, bytes",
      engine: fmt(secondBytes),
      baseline: `first snapshot ${fmt(firstBytes)}`,
      ratio: secondBytes / firstBytes,
    },
    {
      key: "peak_rss_mb_1m",
      figure: `peak RSS, restore of ${fmt(bigRows)} rows, MB`,
      engine: fmtSummary(mb(rssBig)),
      baseline: `process before a restore ${fmt(rssFloor / MB)}`,
      ratio: mb(rssBig).median,
    },
    {
      key: "rss_1m_vs_100k",
      figure: `peak RSS ${fmt(bigRows)} vs ${fmt(rows)} rows`,
      engine: fmtSummary(mb(rssBig), "MB"),
      baseline: fmtSummary(mb(rssSmall), "MB"),
      ratio: mb(rssBig).median / mb(rssSmall).median,
      spread: ratioSpread(mb(rssBig), mb(rssSmall)),
    },
    {
      key: "other_tenant_p99_ratio",
      figure: "other tenant's 1-row UPDATE p99 during a restore, ms",
      engine: fmtSummary(s(p99During)),
      baseline: "no restore " + fmtSummary(s(p99Alone)),
      ratio: s(p99During).median / s(p99Alone).median,
      spread: ratioSpread(s(p99During), s(p99Alone)),
    },
  ];
  const ratioText = (a: Summary, b: Summary) => {
    const [lo, hi] = ratioSpread(a, b);
    return `${(a.median / b.median).toFixed(3)} (${lo.toFixed(3)}–${hi.toFixed(3)})`;
  };
  const info: InfoRow[] = [
    [
      `restore of a 5% drift to an older snapshot, s`,
      fmtSummary(s(olderDrift)),
      "full restore " + fmtSummary(s(full)),
      ratioText(s(olderDrift), s(full)),
    ],
    [
      "other tenant's 1-row UPDATE p99 during COPY FROM of the same rows, ms",
      fmtSummary(s(p99Copy)),
      "no restore " + fmtSummary(s(p99Alone)),
      ratioText(s(p99Copy), s(p99Alone)),
    ],
    ...scaling.map((x): InfoRow => [
      `drift restore, ${x.what}, s`,
      fmtSummary(x.restore),
      "full restore " + fmtSummary(x.full),
      ratioText(x.restore, x.full),
    ]),
  ];
  const [{ version }] = await sql<{ version: string }[]>`select version()`;
  return {
    info,
    figures,
    header: [
      `pitr restore benchmark${quick ? " (--quick)" : ""}: ${TENANTS} tenants of ${
        fmt(rows)
      } rows ` +
      `(${SIZES.users} users, ${SIZES.campaigns} campaigns, ${SIZES.enrollments} enrollments) ` +
      `+ one of ${fmt(bigRows)}; ${REPS} repetitions each (${BIG_REPS} of the big tenant's)`,
      `${version.split(",")[0]}; ${navigator.hardwareConcurrency} CPUs; Deno ${Deno.version.deno}`,
    ],
  };
}

async function main(): Promise<number> {
  const started = performance.now();
  const configured = configuredDatabaseUrl();
  const server = configured ? undefined : await startEmbedded(".pitr/bench-pg");
  const adminUrl = configured ?? server!.url;
  const admin = connect(adminUrl, { max: 1 });
  const name = `pitr_bench_${crypto.randomUUID().slice(0, 8)}`;
  const files = new CopyFiles();
  let sql: Sql | undefined;
  let code = 0;
  let report: Report | undefined;
  try {
    await admin`create database ${admin(name)}`;
    const url = withDatabase(adminUrl, name);
    sql = connect(url, { max: 4 });
    report = await run(sql, url, files);
  } catch (e) {
    console.error("[bench] failed:", e);
    code = 1;
  } finally {
    if (sql) {
      await removeFiles(sql, files);
      await sql.end({ timeout: 5 });
    }
    await admin`drop database if exists ${admin(name)} with (force)`.catch((e) => {
      console.error(`[bench] could not drop ${name}:`, e);
    });
    await admin.end({ timeout: 5 });
    await server?.stop();
  }
  log(`finished in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  // The report last, after the clean-up, so the run's final line is the JSON.
  if (report) printReport(report.figures, report.header, report.info);
  return code;
}

Deno.exit(await main());
