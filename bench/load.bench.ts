// `deno task bench:load [--quick]`: the service under concurrent load, as a server process on the
// benchmark dataset: a burst of snapshots, plans and polls while a restore runs, 30 s of polls.
// It must never pass with a 5xx answer, more connections than the budget, or an inexact restore.
import { SignJWT } from "jose";
import { budgetFromEnv } from "../shared/db/budget.ts";
import { configuredDatabaseUrl, connect, type Sql, withDatabase } from "../shared/db/client.ts";
import { startEmbedded } from "../shared/db/embedded.ts";
import { migrate } from "../shared/db/migrate.ts";
import {
  createSchema,
  deleteTenant,
  loadTenant,
  rowsOf,
  type Sizes,
  TABLES,
  vacuum,
} from "./dataset.ts";
import { PeakConnections, PeakRss, ServedPitr } from "./served.ts";
import { fmt, MB, percentile } from "./stats.ts";
import { printTable } from "./report.ts";

const quick = Deno.args.includes("--quick");
/** 20 tenants, 10 simultaneous snapshots of each. */
const TENANTS = 20;
const SNAPSHOTS_PER_TENANT = 10;
const SMALL: Sizes = quick
  ? { users: 100, campaigns: 10, enrollments: 1_000 }
  : { users: 1_000, campaigns: 100, enrollments: 10_000 };
/** The tenant restored while plans run: 111,000 rows (11,100 with --quick). */
const RESTORED = 100;
const BIG: Sizes = quick
  ? { users: 1_000, campaigns: 100, enrollments: 10_000 }
  : { users: 10_000, campaigns: 1_000, enrollments: 100_000 };
const PLANNERS = 20;
const POLLERS = 50;
const POLL_SECONDS = quick ? 5 : 30;

const log = (msg: string) => console.error(`[bench:load] ${msg}`);

interface Call {
  /** What was asked (snapshot, plan, status, execute): a row of the table each. */
  kind: string;
  status: number;
  ms: number;
  // deno-lint-ignore no-explicit-any
  body: any;
}

class Client {
  constructor(readonly base: string, private bearer: string) {}

  async call(kind: string, method: "GET" | "POST", path: string, body?: unknown): Promise<Call> {
    const started = performance.now();
    const res = await fetch(`${this.base}/${path}`, {
      method,
      headers: {
        authorization: `Bearer ${this.bearer}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    const ms = performance.now() - started;
    let parsed: unknown = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
    return { kind, status: res.status, ms, body: parsed };
  }
}

interface Scenario {
  name: string;
  calls: Call[];
  seconds: number;
  peakConnections: number;
  peakRss: number;
  notes: string[];
}

/** Runs `work` with the server's memory and connections watched. */
async function measured(
  name: string,
  server: ServedPitr,
  url: string,
  work: () => Promise<{ calls: Call[]; notes?: string[] }>,
): Promise<Scenario> {
  const connections = PeakConnections.watch(url);
  const rss = new PeakRss(server.pid);
  const started = performance.now();
  let result: { calls: Call[]; notes?: string[] };
  try {
    result = await work();
  } catch (e) {
    rss.stop();
    await connections.stop();
    throw e;
  }
  const s: Scenario = {
    name,
    calls: result.calls,
    seconds: (performance.now() - started) / 1000,
    peakRss: rss.stop(),
    peakConnections: await connections.stop(),
    notes: result.notes ?? [],
  };
  for (const row of rows(s)) log(row.join(", "));
  return s;
}

function statuses(calls: Call[]): string {
  const counts = new Map<number, number>();
  for (const c of calls) counts.set(c.status, (counts.get(c.status) ?? 0) + 1);
  return [...counts].sort(([a], [b]) => a - b).map(([s, n]) => `${s}×${n}`).join(" ");
}

function fiveXx(calls: Call[]): number {
  return calls.filter((c) => c.status >= 500).length;
}

/** One row per kind of request in a scenario: counts, rate, latency; the peaks are the scenario's. */
function rows(s: Scenario): string[][] {
  const kinds = [...new Set(s.calls.map((c) => c.kind))];
  return kinds.map((kind) => {
    const calls = s.calls.filter((c) => c.kind === kind);
    const ms = calls.map((c) => c.ms);
    return [
      s.name,
      kind,
      String(calls.length),
      fmt(calls.length / s.seconds),
      fmt(percentile(ms, 50)),
      fmt(percentile(ms, 99)),
      statuses(calls),
      String(fiveXx(calls)),
      String(s.peakConnections),
      fmt(s.peakRss / MB),
    ];
  });
}

/** A digest of one tenant's rows in every table of the dataset, to compare before and after. */
async function tenantDigest(sql: Sql, tenant: number): Promise<string> {
  const parts: string[] = [];
  for (const t of TABLES) {
    const [r] = await sql<{ d: string | null; n: string }[]>`
      select md5(string_agg(x::text, ',' order by x::text)) as d, count(*) as n
      from ${sql("public." + t)} x where tenant_id = ${tenant}`;
    parts.push(`${t}:${r.n}:${r.d}`);
  }
  return parts.join(" ");
}

async function run(
  sql: Sql,
  url: string,
): Promise<{ scenarios: Scenario[]; json: Record<string, unknown>; header: string[] }> {
  const budget = budgetFromEnv();
  const loading = performance.now();
  await migrate(sql);
  await createSchema(sql);
  for (let t = 1; t <= TENANTS; t++) await loadTenant(sql, t, SMALL);
  await loadTenant(sql, RESTORED, BIG);
  await vacuum(sql);
  log(
    `loaded ${TENANTS} tenants of ${fmt(rowsOf(SMALL))} rows and one of ${fmt(rowsOf(BIG))} in ` +
      `${((performance.now() - loading) / 1000).toFixed(1)} s`,
  );

  const secret = crypto.randomUUID() + crypto.randomUUID();
  const bearer = await new SignJWT({ role: "service_role" })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" }).setIssuedAt().setExpirationTime("2h")
    .sign(new TextEncoder().encode(secret));
  const server = await ServedPitr.start({ DATABASE_URL: url, SUPABASE_JWT_SECRET: secret });
  const client = new Client(server.origin, bearer);
  const scenarios: Scenario[] = [];
  let exact = false;
  try {
    // 1. A burst: 10 snapshots of each of 20 tenants, all sent at once.
    const before = Number((await sql`select count(*) as n from public.backup_snapshots`)[0].n);
    scenarios.push(
      await measured(
        `${TENANTS * SNAPSHOTS_PER_TENANT} simultaneous snapshots`,
        server,
        url,
        async () => {
          const calls = await Promise.all(
            Array.from(
              { length: TENANTS * SNAPSHOTS_PER_TENANT },
              (_, i) =>
                client.call("snapshot", "POST", "pitr-snapshot", {
                  tenant_id: String(1 + (i % TENANTS)),
                }),
            ),
          );
          const stored =
            Number((await sql`select count(*) as n from public.backup_snapshots`)[0].n) -
            before;
          return {
            calls,
            notes: [
              `${stored} snapshots stored for ${
                calls.filter((c) => c.status === 201).length
              } answered 201 (identical requests waiting together share one)`,
            ],
          };
        },
      ),
    );
    const snapshotOf = new Map<string, string>();
    for (const c of scenarios[0].calls) {
      if (c.status === 201) snapshotOf.set(c.body.tenant_id, c.body.snapshot_id);
    }
    if (snapshotOf.size < TENANTS) throw new Error("some tenant got no snapshot in the burst");
    const planned = [...snapshotOf.values()];

    // 2. The big tenant restored while 20 clients plan and 50 poll its status, back to back.
    const taken = await client.call("snapshot", "POST", "pitr-snapshot", {
      tenant_id: String(RESTORED),
    });
    if (taken.status !== 201) throw new Error(`snapshot of the big tenant: ${taken.status}`);
    const want = await tenantDigest(sql, RESTORED);
    await deleteTenant(sql, RESTORED);
    await vacuum(sql);
    let rollbackId = "";
    scenarios.push(
      await measured(
        `a ${fmt(rowsOf(BIG))}-row restore, ${PLANNERS} clients planning, ${POLLERS} polling it`,
        server,
        url,
        async () => {
          const started = await client.call("execute", "POST", "pitr-execute", {
            snapshot_id: taken.body.snapshot_id,
          });
          if (started.status !== 202) {
            throw new Error(`execute: ${started.status} ${JSON.stringify(started.body)}`);
          }
          rollbackId = started.body.rollback_id;
          const calls: Call[] = [started];
          let final: { status: string; error: unknown; started_at: string; completed_at: string };
          // Every client sends its next request as soon as the last is answered, until the
          // restore has ended; each sends at least one.
          const clients = [
            ...Array.from({ length: POLLERS }, () => async () => {
              const s = await client.call("status", "GET", `pitr-status?rollback_id=${rollbackId}`);
              if (s.status === 200 && !["pending", "running"].includes(s.body.status)) {
                final = s.body;
              }
              return s;
            }),
            ...Array.from(
              { length: PLANNERS },
              (_, i) => () =>
                client.call("plan", "POST", "pitr-plan", {
                  snapshot_id: planned[i % planned.length],
                }),
            ),
          ];
          await Promise.all(clients.map(async (next) => {
            do calls.push(await next()); while (!final);
          }));
          if (final!.status !== "completed") {
            throw new Error(`the restore ended ${final!.status}: ${JSON.stringify(final!.error)}`);
          }
          const took = (Date.parse(final!.completed_at) - Date.parse(final!.started_at)) / 1000;
          return { calls, notes: [`the restore ran ${fmt(took)} s`] };
        },
      ),
    );
    exact = await tenantDigest(sql, RESTORED) === want;
    log(`the restored tenant is ${exact ? "exactly as snapshotted" : "NOT as snapshotted"}`);

    // 3. 50 clients polling the restore's status back to back.
    scenarios.push(
      await measured(
        `${POLLERS} clients polling a status for ${POLL_SECONDS} s`,
        server,
        url,
        async () => {
          const deadline = performance.now() + POLL_SECONDS * 1000;
          const calls: Call[] = [];
          await Promise.all(Array.from({ length: POLLERS }, async () => {
            while (performance.now() < deadline) {
              calls.push(
                await client.call("status", "GET", `pitr-status?rollback_id=${rollbackId}`),
              );
            }
          }));
          return { calls };
        },
      ),
    );
  } finally {
    await server.stop();
  }

  const all = scenarios.flatMap((s) => s.calls);
  const [{ version }] = await sql<{ version: string }[]>`select version()`;
  const [{ max }] = await sql<{ max: string }[]>`select current_setting('max_connections') as max`;
  const ms = (scenario: number, kind: string) =>
    scenarios[scenario].calls.filter((c) => c.kind === kind).map((c) => c.ms);
  const json = {
    five_xx: fiveXx(all),
    peak_connections: Math.max(...scenarios.map((s) => s.peakConnections)),
    budget: budget.connections,
    peak_rss_mb: Math.round(Math.max(...scenarios.map((s) => s.peakRss)) / MB),
    restore_exact: exact,
    requests: all.length,
    snapshot_burst_p99_ms: Math.round(percentile(ms(0, "snapshot"), 99)),
    plan_during_restore_p99_ms: Math.round(percentile(ms(1, "plan"), 99)),
    status_polls_per_s: Math.round(ms(2, "status").length / scenarios[2].seconds),
    status_poll_p99_ms: Math.round(percentile(ms(2, "status"), 99)),
  };
  return {
    scenarios,
    json,
    header: [
      `pitr load benchmark${quick ? " (--quick)" : ""}: a server process as \`deno task serve\` ` +
      `with PITR_MAX_CONNECTIONS = ${budget.connections}; ${TENANTS} tenants of ` +
      `${fmt(rowsOf(SMALL))} rows and one of ${fmt(rowsOf(BIG))}`,
      `${version.split(",")[0]} (max_connections ${max}); ${navigator.hardwareConcurrency} CPUs; ` +
      `Deno ${Deno.version.deno}`,
    ],
  };
}

function printReport(
  r: { scenarios: Scenario[]; json: Record<string, unknown>; header: string[] },
) {
  const head = [
    "scenario",
    "request",
    "count",
    "req/s",
    "p50 ms",
    "p99 ms",
    "statuses",
    "5xx",
    "peak connections",
    "peak RSS MB",
  ];
  const table = r.scenarios.flatMap(rows);
  console.log("");
  for (const h of r.header) console.log(h);
  console.log("");
  printTable(head, table);
  console.log("");
  for (const s of r.scenarios) for (const n of s.notes) console.log(`${s.name}: ${n}`);
  console.log(JSON.stringify(r.json));
}

async function main(): Promise<number> {
  const started = performance.now();
  const configured = configuredDatabaseUrl();
  const embedded = configured ? undefined : await startEmbedded(".pitr/bench-load-pg");
  const adminUrl = configured ?? embedded!.url;
  const admin = connect(adminUrl, { max: 1, application: "pitr_bench" });
  const name = `pitr_load_${crypto.randomUUID().slice(0, 8)}`;
  let sql: Sql | undefined;
  let code = 0;
  let report: Awaited<ReturnType<typeof run>> | undefined;
  try {
    await admin`create database ${admin(name)}`;
    const url = withDatabase(adminUrl, name);
    sql = connect(url, { max: 2, application: "pitr_bench" });
    report = await run(sql, url);
    const j = report.json;
    const broken = [
      j.five_xx !== 0 && `${j.five_xx} answers were 5xx`,
      (j.peak_connections as number) > (j.budget as number) &&
      `the server held ${j.peak_connections} connections on a budget of ${j.budget}`,
      !j.restore_exact && "the restored tenant differs from its snapshot",
    ].filter(Boolean);
    for (const b of broken) console.error(`[bench:load] FAILED: ${b}`);
    if (broken.length) code = 1;
  } catch (e) {
    console.error("[bench:load] failed:", e);
    code = 1;
  } finally {
    await sql?.end({ timeout: 5 });
    await admin`drop database if exists ${admin(name)} with (force)`.catch((e) => {
      console.error(`[bench:load] could not drop ${name}:`, e);
    });
    await admin.end({ timeout: 5 });
    await embedded?.stop();
  }
  log(`finished in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  // The report last, after the clean-up, so the run's final line is the JSON.
  if (report) printReport(report);
  return code;
}

Deno.exit(await main());
