// `deno task bench:checkpoint [--quick]`: what a checkpoint between a tenant's damage and its
// restore costs the restore. After a checkpoint, the first change of each page writes the whole
// page to the WAL (a full-page image). A restore the day after a bad import meets every page it
// changes in that state; one timed in a benchmark loop meets it only where a checkpoint happened
// to begin. It times the same restores with a CHECKPOINT just before each and without,
// alternating, in a fresh database it drops at the end, and prints the WAL each wrote. It must
// never assert a goal.
import type { Sql } from "../shared/db/client.ts";
import { migrate } from "../shared/db/migrate.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { createRestore } from "../shared/restore/history.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import {
  applyDrift,
  createSchema,
  deleteTenant,
  loadTenant,
  rowsOf,
  type Sizes,
  vacuum,
} from "./dataset.ts";
import { fmt, fmtSummary, MB, round3, summarise, type Summary } from "./stats.ts";
import { inFreshDatabase } from "./fresh_database.ts";
import { printTable } from "./report.ts";

const quick = Deno.args.includes("--quick");
const REPS = quick ? 2 : 5;
const TENANTS = quick ? 3 : 10;
const SIZES: Sizes = quick
  ? { users: 1_000, campaigns: 100, enrollments: 10_000 }
  : { users: 10_000, campaigns: 1_000, enrollments: 100_000 };
const MEASURED = 1;

const log = (msg: string) => console.error(`[bench:checkpoint] ${msg}`);

interface Timed {
  seconds: number;
  walBytes: number;
}

/** A restore as the API runs it, with the WAL written while it ran; its undo is dropped after. */
async function restore(sql: Sql, snapshotId: string): Promise<Timed> {
  const { id } = await createRestore(sql, {
    snapshotId,
    tenantId: String(MEASURED),
    strategy: "overwrite",
  });
  const [before] = await sql<{ lsn: string }[]>`select pg_current_wal_insert_lsn()::text as lsn`;
  const start = performance.now();
  const status = await executeRestore(sql, id);
  const seconds = (performance.now() - start) / 1000;
  const [wal] = await sql<{ bytes: string }[]>`
    select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), ${before.lsn}::pg_lsn) as bytes`;
  if (status.status !== "completed") {
    throw new Error(`restore ${id} ended ${status.status}: ${JSON.stringify(status.error)}`);
  }
  if (status.undo_snapshot_id) await sql`select pitr.drop_snapshot(${status.undo_snapshot_id})`;
  return { seconds, walBytes: Number(wal.bytes) };
}

type Mode = "checkpoint" | "none";

/** Runs `prepare` then a timed restore REPS times in each mode, the modes alternating. */
async function both(
  sql: Sql,
  prepare: () => Promise<string>,
): Promise<Record<Mode, Timed[]>> {
  const out: Record<Mode, Timed[]> = { checkpoint: [], none: [] };
  for (let i = 0; i < REPS; i++) {
    const order: Mode[] = i % 2 ? ["none", "checkpoint"] : ["checkpoint", "none"];
    for (const mode of order) {
      const snapshotId = await prepare();
      if (mode === "checkpoint") await sql`checkpoint`;
      out[mode].push(await restore(sql, snapshotId));
    }
  }
  return out;
}

const seconds = (t: Timed[]) => summarise(t.map((x) => x.seconds));
const walMb = (t: Timed[]) => summarise(t.map((x) => x.walBytes / MB));

async function run(sql: Sql): Promise<void> {
  await migrate(sql);
  await createSchema(sql);
  for (let t = 1; t <= TENANTS; t++) await loadTenant(sql, t, SIZES);
  await vacuum(sql);
  log(`loaded ${TENANTS} tenants of ${fmt(rowsOf(SIZES))} rows`);
  const first = await takeSnapshot(sql, { tenantId: String(MEASURED) });

  // The full restore of an emptied tenant, as deno task bench times it.
  const full = await both(sql, async () => {
    await deleteTenant(sql, MEASURED);
    await vacuum(sql);
    return first.snapshot_id;
  });
  // A 5% drift restored to the snapshot taken just before it.
  const drift = await both(sql, async () => {
    const latest = await takeSnapshot(sql, { tenantId: String(MEASURED) });
    await applyDrift(sql, MEASURED, SIZES, 5);
    await vacuum(sql);
    return latest.snapshot_id;
  });

  const rows: [string, Summary, Summary, Summary, Summary][] = [
    ["full restore of an emptied tenant", ...pair(full)],
    ["restore of a 5% drift", ...pair(drift)],
  ];
  const head = ["restore", "after a CHECKPOINT, s", "WAL, MB", "without, s", "WAL, MB", "ratio"];
  const table = rows.map(([what, ck, ckWal, none, noneWal]) => [
    what,
    fmtSummary(ck),
    fmtSummary(ckWal),
    fmtSummary(none),
    fmtSummary(noneWal),
    `${round3(ck.median / none.median)} (${round3(ck.min / none.max)}–${
      round3(ck.max / none.min)
    })`,
  ]);
  console.log("");
  console.log(
    `restores of one tenant of ${fmt(rowsOf(SIZES))} rows among ${TENANTS}, ${REPS} of each, ` +
      "with and without a CHECKPOINT just before, alternating",
  );
  console.log("");
  printTable(head, table);
  const ratio = (mode: Mode) => round3(seconds(drift[mode]).median / seconds(full[mode]).median);
  console.log("");
  console.log(JSON.stringify({
    drift_checkpoint_vs_none: round3(
      seconds(drift.checkpoint).median / seconds(drift.none).median,
    ),
    full_checkpoint_vs_none: round3(seconds(full.checkpoint).median / seconds(full.none).median),
    drift_vs_full_after_checkpoint: ratio("checkpoint"),
    drift_vs_full_without: ratio("none"),
  }));
}

function pair(t: Record<Mode, Timed[]>): [Summary, Summary, Summary, Summary] {
  return [seconds(t.checkpoint), walMb(t.checkpoint), seconds(t.none), walMb(t.none)];
}

Deno.exit(await inFreshDatabase({ dataDir: ".pitr/checkpoint-pg", prefix: "pitr_ckpt", log }, run));
