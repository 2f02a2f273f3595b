// `deno task bench:tables [--quick] [--rows N]`: what a restore costs in a schema of many tables
// when the damage is in one of them. `deno task bench` has three tables, all drifted; an
// application has dozens, and a bad import or a mistaken bulk update touches a few. The restore of
// such a drift should cost in proportion to what changed, not to the number of tables nor to their
// size. It times, in a fresh database it drops at the end, the restore of a few rows changed in one
// table of many, of the same rows changed in every table, and the full restore of the emptied
// tenant (the baseline, as in deno task bench). It must never assert a goal.
import type { Sql } from "../shared/db/client.ts";
import { migrate } from "../shared/db/migrate.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { createRestore } from "../shared/restore/history.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { inFreshDatabase } from "./fresh_database.ts";
import { printTable } from "./report.ts";
import { fmt, fmtSummary, round3, summarise, type Summary, timed } from "./stats.ts";

const quick = Deno.args.includes("--quick");
const REPS = quick ? 2 : 5;
const TABLES = quick ? 10 : 30;
const TENANTS = quick ? 2 : 5;
/** Rows of each tenant in each table (--rows N: a multiple of 100, for larger tables). */
const ROWS = rowsArg() ?? (quick ? 200 : 1_000);
/** Rows changed in a drifted table: every hundredth. */
const DRIFTED = ROWS / 100;
const MEASURED = 1;

const log = (msg: string) => console.error(`[bench:tables] ${msg}`);

function rowsArg(): number | undefined {
  const at = Deno.args.indexOf("--rows");
  if (at < 0) return undefined;
  const n = Number(Deno.args[at + 1]);
  if (!Number.isInteger(n) || n < 100 || n % 100 !== 0) {
    throw new Error(`--rows takes a multiple of 100, not ${Deno.args[at + 1]}`);
  }
  return n;
}

// Table names are the bench's own (t0 … tN); no text from outside reaches sql.unsafe.
const table = (i: number) => `public.t${i}`;

/** TABLES tables, each but the first referencing the one before it (a chain of foreign keys). */
async function createTables(sql: Sql): Promise<void> {
  for (let i = 0; i < TABLES; i++) {
    const parent = i === 0 ? "" : `, parent_id bigint not null references ${table(i - 1)} (id)`;
    await sql.unsafe(`create table ${table(i)} (id bigint primary key, tenant_id bigint not null,
      title text not null, body jsonb not null, updated_at timestamptz not null${parent})`);
    await sql.unsafe(`create index on ${table(i)} (tenant_id)`);
    if (i > 0) await sql.unsafe(`create index on ${table(i)} (parent_id)`);
    await sql.unsafe(`insert into ${table(i)}
      select t * 1000000 + g, t, 'row ' || g, jsonb_build_object('g', g, 'tags', array['a', 'b']),
        timestamptz '2025-01-01 00:00:00+00' + g * interval '1 minute'
        ${i === 0 ? "" : ", t * 1000000 + g"}
      from generate_series(1, ${TENANTS}) t, generate_series(1, ${ROWS}) g`);
  }
  for (let i = 0; i < TABLES; i++) await sql.unsafe(`vacuum analyze ${table(i)}`);
}

/** Changes every hundredth row of the measured tenant in the given tables. */
async function drift(sql: Sql, tables: number[]): Promise<void> {
  for (const i of tables) {
    const r = await sql.unsafe(`update ${table(i)} set title = title || ' (edited)',
      updated_at = updated_at + interval '1 day'
      where tenant_id = ${MEASURED} and id % 100 = 0`);
    if (r.count !== DRIFTED) throw new Error(`drift of ${table(i)}: ${r.count} rows`);
  }
}

/** A restore as the API runs it; anything but completed is a failure. Its undo is dropped after. */
async function restore(sql: Sql, snapshotId: string): Promise<number> {
  const { id } = await createRestore(sql, {
    snapshotId,
    tenantId: String(MEASURED),
    strategy: "overwrite",
  });
  const r = await timed(() => executeRestore(sql, id));
  if (r.value.status !== "completed") {
    throw new Error(`restore ${id} ended ${r.value.status}: ${JSON.stringify(r.value.error)}`);
  }
  if (r.value.undo_snapshot_id) await sql`select pitr.drop_snapshot(${r.value.undo_snapshot_id})`;
  return r.seconds;
}

/** The measured tenant's rows, and those a drift left edited: the restore's result. */
async function check(sql: Sql, what: string): Promise<void> {
  for (let i = 0; i < TABLES; i++) {
    const [r] = await sql.unsafe(`select count(*)::int as n,
      count(*) filter (where title like '%(edited)')::int as edited
      from ${table(i)} where tenant_id = ${MEASURED}`);
    if (r.n !== ROWS || r.edited !== 0) {
      throw new Error(`after ${what}: ${table(i)} has ${r.n} rows, ${r.edited} edited`);
    }
  }
}

async function run(sql: Sql): Promise<void> {
  await migrate(sql);
  await createTables(sql);
  log(`loaded ${TABLES} tables of ${fmt(ROWS)} rows for each of ${TENANTS} tenants`);
  const all = Array.from({ length: TABLES }, (_, i) => i);
  const first = await takeSnapshot(sql, { tenantId: String(MEASURED) });

  // Each drift restored to the snapshot taken just before it; a warm-up of each first.
  const driftRestore = async (tables: number[]) => {
    const times: number[] = [];
    for (let i = 0; i <= REPS; i++) {
      const latest = await takeSnapshot(sql, { tenantId: String(MEASURED) });
      await drift(sql, tables);
      const seconds = await restore(sql, latest.snapshot_id);
      await check(sql, `the restore of a drift in ${tables.length} tables`);
      if (i > 0) times.push(seconds);
    }
    return summarise(times);
  };
  const one = await driftRestore([TABLES - 1]);
  const every = await driftRestore(all);
  const full: number[] = [];
  for (let i = 0; i <= REPS; i++) {
    await sql.begin(async (tx) => {
      for (const t of [...all].reverse()) {
        await tx.unsafe(`delete from ${table(t)} where tenant_id = ${MEASURED}`);
      }
    });
    const seconds = await restore(sql, first.snapshot_id);
    await check(sql, "the full restore");
    if (i > 0) full.push(seconds);
  }
  const base = summarise(full);

  const ratio = (a: Summary) =>
    `${round3(a.median / base.median)} (${round3(a.min / base.max)}–${round3(a.max / base.min)})`;
  const rows = [
    [
      `restore of ${DRIFTED} rows changed in 1 table of ${TABLES}, s`,
      fmtSummary(one),
      `full restore ${fmtSummary(base)}`,
      ratio(one),
    ],
    [
      `restore of ${DRIFTED} rows changed in each of the ${TABLES} tables, s`,
      fmtSummary(every),
      `full restore ${fmtSummary(base)}`,
      ratio(every),
    ],
  ];
  const [{ version }] = await sql<{ version: string }[]>`select version()`;
  console.log("");
  console.log(
    `restores of one tenant of ${TABLES} tables × ${fmt(ROWS)} rows among ${TENANTS}, ` +
      `${REPS} of each after a warm-up`,
  );
  console.log(
    `${version.split(",")[0]}; ${navigator.hardwareConcurrency} CPUs; Deno ${Deno.version.deno}`,
  );
  console.log("");
  printTable(["restore", "engine: median (min–max)", "baseline", "ratio (min–max)"], rows);
  console.log("");
  console.log(JSON.stringify({
    one_table_drift_vs_full: round3(one.median / base.median),
    every_table_drift_vs_full: round3(every.median / base.median),
    one_table_drift_ms_per_table: round3((one.median * 1000) / TABLES),
  }));
}

Deno.exit(await inFreshDatabase({ dataDir: ".pitr/tables-pg", prefix: "pitr_tables", log }, run));
