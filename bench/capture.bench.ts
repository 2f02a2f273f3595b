// `deno task bench:capture [--quick]`: the cost of change capture (issue 6): the application's
// write throughput and latency with and without capture, and the log's size per million changes,
// in a fresh database it drops at the end. It must never assert a timing.
import { configuredDatabaseUrl, connect, type Sql, withDatabase } from "../shared/db/client.ts";
import { startEmbedded } from "../shared/db/embedded.ts";
import { migrate } from "../shared/db/migrate.ts";
import {
  Client,
  createEvents,
  type Kind,
  KINDS,
  loadEvents,
  MIX,
  ROWS_PER_TENANT,
  type RunResult,
  runWorkload,
} from "./capture_workload.ts";
import { fmt, fmtSummary, MB, percentile, round3, summarise, type Summary } from "./stats.ts";
import { printTable } from "./report.ts";

const quick = Deno.args.includes("--quick");
const REPS = quick ? 3 : 5;
const CLIENTS = 4;
const ROWS = quick ? 20_000 : 1_000_000;
const TX_PER_CLIENT = quick ? 500 : 10_000;
const WARMUP_TX_PER_CLIENT = quick ? 100 : 1_000;

const log = (msg: string) => console.error(`[bench:capture] ${msg}`);

/** One repetition's figures. */
interface Rep {
  capture: boolean;
  tps: number;
  p50: number;
  p99: number;
  p50ByKind: Record<Kind, number>;
  walPerTx: number | undefined;
  /** With capture: the log's rows and bytes after the repetition (it starts empty). */
  logRows?: number;
  logBytes?: number;
  commitBytes?: number;
  logRowsByOp?: Record<string, number>;
}

async function walLsn(sql: Sql): Promise<string | undefined> {
  try {
    const [r] = await sql<{ lsn: string }[]>`select pg_current_wal_lsn()::text as lsn`;
    return r.lsn;
  } catch {
    return undefined; // not allowed for this role: the WAL figure is left out
  }
}

async function walBytes(sql: Sql, from?: string, to?: string): Promise<number | undefined> {
  if (!from || !to) return undefined;
  const [r] = await sql<{ bytes: string }[]>`
    select pg_wal_lsn_diff(${to}::pg_lsn, ${from}::pg_lsn)::bigint as bytes`;
  return Number(r.bytes);
}

/**
 * The log's size: every relation of its partition tree, with indexes and TOAST, and the commit
 * stamps (pitr.commits, one row a transaction), which capture writes as part of the log.
 */
async function logSize(sql: Sql): Promise<{ rows: number; bytes: number; commitBytes: number }> {
  const [r] = await sql<{ rows: string; bytes: string; commit_bytes: string }[]>`select
    (select count(*) from pitr.changes) as rows,
    (select coalesce(sum(pg_total_relation_size(relid)), 0)
     from pg_partition_tree('pitr.changes')) as bytes,
    pg_total_relation_size('pitr.commits') as commit_bytes`;
  return {
    rows: Number(r.rows),
    bytes: Number(r.bytes) + Number(r.commit_bytes),
    commitBytes: Number(r.commit_bytes),
  };
}

/** The same starting point for every repetition: no dead rows, nothing left to checkpoint. */
async function settle(sql: Sql): Promise<void> {
  await sql`vacuum analyze public.events`;
  await sql`checkpoint`.catch(() => {}); // needs superuser or pg_checkpoint; optional
}

async function resetLog(sql: Sql): Promise<void> {
  // The bench's own database: emptying the log keeps each repetition's size figure separate.
  await sql`truncate pitr.changes, pitr.commits`;
}

async function repetition(
  sql: Sql,
  capture: boolean,
  clients: Client[],
  tenants: number,
  seed: number,
  transactionsPerClient: number,
): Promise<{ rep: Rep; run: RunResult }> {
  await settle(sql);
  if (capture) {
    await resetLog(sql);
    await sql`select pitr.capture_enable('events')`;
  }
  const walFrom = await walLsn(sql);
  const run = await runWorkload(sql, {
    loadedRows: ROWS,
    tenants,
    clients,
    transactionsPerClient,
    seed,
  });
  const wal = await walBytes(sql, walFrom, await walLsn(sql));
  const all = KINDS.flatMap((k) => run.latencies[k]);
  const rep: Rep = {
    capture,
    tps: run.transactions / run.seconds,
    p50: percentile(all, 50),
    p99: percentile(all, 99),
    p50ByKind: Object.fromEntries(
      KINDS.map((k) => [k, run.latencies[k].length ? percentile(run.latencies[k], 50) : NaN]),
    ) as Record<Kind, number>,
    walPerTx: wal === undefined ? undefined : wal / run.transactions,
  };
  if (capture) {
    const size = await logSize(sql);
    // Capture must record every row the application changed, no more, no fewer.
    if (size.rows !== run.rowsChanged) {
      throw new Error(`the log holds ${size.rows} rows for ${run.rowsChanged} rows changed`);
    }
    const byOp = await sql<{ op: string; n: string }[]>`
      select op::text, count(*) as n from pitr.changes group by op order by op`;
    rep.logRows = size.rows;
    rep.logBytes = size.bytes;
    rep.commitBytes = size.commitBytes;
    rep.logRowsByOp = Object.fromEntries(byOp.map((r) => [r.op, Number(r.n)]));
    await resetLog(sql);
    await sql`select pitr.capture_disable('events')`;
  }
  return { rep, run };
}

interface Report {
  header: string[];
  rows: string[][];
  notes: string[];
  json: Record<string, number>;
}

async function run(sql: Sql): Promise<Report> {
  await migrate(sql);
  await createEvents(sql);
  const loadStart = performance.now();
  const tenants = await loadEvents(sql, ROWS);
  const [table] = await sql<{ bytes: string; rows: string }[]>`select
    pg_total_relation_size('public.events') as bytes, (select count(*) from public.events) as rows`;
  const tableBytesPerRow = Number(table.bytes) / Number(table.rows);
  log(
    `loaded ${fmt(ROWS)} events of ${fmt(tenants)} tenants (${
      fmt(Number(table.bytes) / MB)
    } MB) in ${((performance.now() - loadStart) / 1000).toFixed(1)} s`,
  );

  const clients = Array.from({ length: CLIENTS }, (_, i) => new Client(i));
  // Warm-up of each mode, not counted: caches, prepared statements, the trigger's plans.
  await repetition(sql, false, clients, tenants, 0, WARMUP_TX_PER_CLIENT);
  await repetition(sql, true, clients, tenants, 0, WARMUP_TX_PER_CLIENT);

  // Alternating, so that drift over the run (table growth, the machine's other load) falls on
  // both modes alike; the two runs of a pair use the same seed, hence the same mix of statements.
  const off: Rep[] = [];
  const on: Rep[] = [];
  let deadlocks = 0;
  for (let i = 1; i <= REPS; i++) {
    for (const capture of [false, true]) {
      const { rep, run } = await repetition(sql, capture, clients, tenants, i, TX_PER_CLIENT);
      deadlocks += run.deadlocks;
      (capture ? on : off).push(rep);
      log(
        `rep ${i} ${capture ? "with   " : "without"} capture: ${fmt(rep.tps)} tx/s, p50 ${
          fmt(rep.p50)
        } ms, p99 ${fmt(rep.p99)} ms` +
          (capture ? `, log ${fmt(rep.logRows!)} rows, ${fmt(rep.logBytes! / MB)} MB` : ""),
      );
    }
  }

  const s = (reps: Rep[], f: (r: Rep) => number): Summary => summarise(reps.map(f));
  const pairs = (f: (r: Rep) => number): Summary => summarise(on.map((r, i) => f(r) / f(off[i])));
  const tps = { off: s(off, (r) => r.tps), on: s(on, (r) => r.tps) };
  const p50 = { off: s(off, (r) => r.p50), on: s(on, (r) => r.p50) };
  const p99 = { off: s(off, (r) => r.p99), on: s(on, (r) => r.p99) };
  const bytesPerChange = s(on, (r) => r.logBytes! / r.logRows!);
  const mbPerMillion = (bytesPerChange.median * 1_000_000) / MB;
  const hasWal = [...on, ...off].every((r) => r.walPerTx !== undefined);
  const wal = hasWal ? { off: s(off, (r) => r.walPerTx!), on: s(on, (r) => r.walPerTx!) } : null;

  const ratio = (x: { off: Summary; on: Summary }, f: (r: Rep) => number) =>
    `${round3(x.on.median / x.off.median)} (pairs ${fmt(pairs(f).min)}–${fmt(pairs(f).max)})`;
  const rows: string[][] = [
    ["throughput, tx/s", fmtSummary(tps.on), fmtSummary(tps.off), ratio(tps, (r) => r.tps)],
    ["latency p50, ms", fmtSummary(p50.on), fmtSummary(p50.off), ratio(p50, (r) => r.p50)],
    ["latency p99, ms", fmtSummary(p99.on), fmtSummary(p99.off), ratio(p99, (r) => r.p99)],
  ];
  for (const k of KINDS) {
    const f = (r: Rep) => r.p50ByKind[k];
    const x = { off: s(off, f), on: s(on, f) };
    rows.push([
      `  p50 of ${k.replace("_", " ")}, ms`,
      fmtSummary(x.on),
      fmtSummary(x.off),
      ratio(x, f),
    ]);
  }
  if (wal) {
    rows.push([
      "WAL per transaction, bytes",
      fmtSummary(wal.on),
      fmtSummary(wal.off),
      ratio(wal, (r) => r.walPerTx!),
    ]);
  }
  rows.push([
    "log per change, bytes",
    fmtSummary(bytesPerChange),
    `events table ${fmt(tableBytesPerRow)} per row`,
    round3(bytesPerChange.median / tableBytesPerRow).toString(),
  ]);
  const stampsPerChange = s(on, (r) => r.commitBytes! / r.logRows!);
  rows.push([
    "  of which commit stamps, bytes",
    fmtSummary(stampsPerChange),
    "",
    "",
  ]);
  rows.push([
    "log per million changes, MB",
    fmt(mbPerMillion),
    `events table ${fmt((tableBytesPerRow * 1_000_000) / MB)} per million rows`,
    "",
  ]);

  const logged = on.reduce((t, r) => t + r.logRows!, 0);
  const byOp: Record<string, number> = {};
  for (const r of on) {
    for (const [op, n] of Object.entries(r.logRowsByOp!)) byOp[op] = (byOp[op] ?? 0) + n;
  }
  const opShare = Object.entries(byOp).map(([op, n]) => `${op} ${((100 * n) / logged).toFixed(0)}%`)
    .join(", ");
  const [{ version }] = await sql<{ version: string }[]>`select version()`;
  const json: Record<string, number> = {
    capture_tps_ratio: round3(tps.on.median / tps.off.median),
    capture_p50_ratio: round3(p50.on.median / p50.off.median),
    capture_p99_ratio: round3(p99.on.median / p99.off.median),
    log_mb_per_million_changes: round3(mbPerMillion),
    log_bytes_per_change: round3(bytesPerChange.median),
  };
  if (wal) json.capture_wal_ratio = round3(wal.on.median / wal.off.median);
  return {
    header: [
      `pitr capture benchmark${quick ? " (--quick)" : ""}: public.events, ${fmt(ROWS)} rows of ` +
      `${fmt(tenants)} tenants (${ROWS_PER_TENANT} each, interleaved); ${CLIENTS} clients × ` +
      `${fmt(TX_PER_CLIENT)} autocommit transactions a repetition; ${REPS} repetitions a mode, ` +
      `alternating, after one warm-up each; median (min–max)`,
      `mix: ${KINDS.map((k) => `${MIX[k]}% ${k.replace("_", " ")}`).join(", ")} ` +
      `(single rows by primary key; tenant update = UPDATE … WHERE tenant_id, ~${ROWS_PER_TENANT} rows)`,
      `${version.split(",")[0]}; ${navigator.hardwareConcurrency} CPUs; Deno ${Deno.version.deno}`,
    ],
    rows,
    notes: [
      `logged ${fmt(logged)} changes over the ${REPS} repetitions with capture (${opShare}); ` +
      `each equals the rows the application changed. Ratio = with / without; "pairs" is the ` +
      `spread of the ratio within each alternating pair.` +
      (deadlocks ? ` ${deadlocks} deadlocks between tenant updates, retried.` : ""),
      `MB = 2^20 bytes; the log's size is every relation of pg_partition_tree('pitr.changes') ` +
      `(heap, index, TOAST) and pitr.commits (the commit stamps, one row a transaction).`,
    ],
    json,
  };
}

function printReport(r: Report): void {
  const head = ["figure", "with capture", "without capture", "ratio"];
  console.log("");
  for (const h of r.header) console.log(h);
  console.log("");
  printTable(head, r.rows);
  console.log("");
  for (const n of r.notes) console.log(n);
  console.log(JSON.stringify(r.json));
}

async function main(): Promise<number> {
  const started = performance.now();
  const configured = configuredDatabaseUrl();
  const server = configured ? undefined : await startEmbedded(".pitr/bench-capture-pg");
  const adminUrl = configured ?? server!.url;
  const admin = connect(adminUrl, { max: 1 });
  const name = `pitr_capture_${crypto.randomUUID().slice(0, 8)}`;
  let sql: Sql | undefined;
  let code = 0;
  let report: Report | undefined;
  try {
    await admin`create database ${admin(name)}`;
    // Every connection in the pool: the clients reserve theirs, and nothing opens a session.
    sql = connect(withDatabase(adminUrl, name), { max: CLIENTS + 1, sessions: 0 });
    report = await run(sql);
  } catch (e) {
    console.error("[bench:capture] failed:", e);
    code = 1;
  } finally {
    await sql?.end({ timeout: 5 });
    await admin`drop database if exists ${admin(name)} with (force)`.catch((e) => {
      console.error(`[bench:capture] could not drop ${name}:`, e);
    });
    await admin.end({ timeout: 5 });
    await server?.stop();
  }
  log(`finished in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  // The report last, after the clean-up, so the run's final line is the JSON.
  if (report) printReport(report);
  return code;
}

Deno.exit(await main());
