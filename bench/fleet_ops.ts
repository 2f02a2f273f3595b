// `deno task bench:fleetops [--quick]`: the fleet's operations, issue 12: another tenant's write
// latency while the change log is maintained (partitions made, detached, dropped) against idle,
// and drill calls covering a fleet within their budget. The measuring functions take a postgres.js
// `sql` and options so that bench:fleet can reuse them on its own fleet. It must never assert a
// timing, and never touch another database than the fresh one it creates (dropped at the end).
import { configuredDatabaseUrl, connect, type Sql, withDatabase } from "../shared/db/client.ts";
import { startEmbedded } from "../shared/db/embedded.ts";
import { migrate } from "../shared/db/migrate.ts";
import { drillFleet } from "../shared/restore/drill.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { createSchema } from "./dataset.ts";
import { fmt, percentile, round3 } from "./stats.ts";

const log = (msg: string) => console.error(`[bench:fleetops] ${msg}`);
const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

/**
 * Another tenant's writer on a connection of its own: one-row updates of a captured table back to
 * back, each with its start and end (performance.now()), until `stop()` or `seconds`.
 */
async function timedWrites(
  url: string,
  tenant: number,
  seconds: number,
  stop: () => boolean = () => false,
): Promise<{ start: number; ms: number }[]> {
  const w = connect(url, { max: 1, sessions: 0 });
  try {
    const out: { start: number; ms: number }[] = [];
    const deadline = performance.now() + seconds * 1000;
    let i = 0;
    while (performance.now() < deadline && !stop()) {
      const start = performance.now();
      const r = await w`update public.users set updated_at = clock_timestamp()
        where tenant_id = ${tenant} and member_no = ${i++ % 10}`;
      out.push({ start, ms: performance.now() - start });
      if (r.count !== 1) throw new Error(`the writer's update touched ${r.count} rows`);
    }
    return out;
  } finally {
    await w.end({ timeout: 5 });
  }
}

/** Bigint keys as in bench/dataset.ts: tenant * ID_SPAN + n. */
const ID_SPAN = 1_000_000_000;

/**
 * A fleet of `tenants` tenants (ids 1..tenants) in bench/dataset.ts's schema, loaded set-based:
 * one INSERT per table for the whole fleet. Rows per tenant: users, campaigns, enrollments.
 */
export async function buildFleet(
  sql: Sql,
  options: { tenants: number; users: number; campaigns: number; enrollments: number },
): Promise<void> {
  const { tenants: n, users: u, campaigns: c, enrollments: e } = options;
  await createSchema(sql);
  await sql.begin(async (tx) => {
    // Foreign keys hold by construction (as in bench/dataset.ts's loadTenant).
    await tx`set local session_replication_role = replica`;
    await tx`insert into public.users
      select md5('u:' || t || ':' || g)::uuid, t, g, 'user' || g || '@tenant' || t || '.example',
        'User ' || g, jsonb_build_object('plan', (array['free', 'pro', 'team'])[1 + g % 3],
          'score', g % 1000, 'tags', jsonb_build_array('t' || g % 10)),
        timestamptz '2025-01-01 00:00:00+00' + g * interval '1 minute',
        timestamptz '2025-06-01 00:00:00+00' + g * interval '1 second'
      from generate_series(1, ${n}::int) t, generate_series(0, ${u - 1}::int) g`;
    await tx`insert into public.campaigns
      select t::bigint * ${ID_SPAN}::bigint + g, t, md5('u:' || t || ':' || (g % ${u}::int))::uuid,
        'Campaign ' || g, jsonb_build_object('channel', (array['email', 'sms'])[1 + g % 2]),
        timestamptz '2025-02-01 00:00:00+00' + g * interval '1 hour',
        timestamptz '2025-01-15 00:00:00+00' + g * interval '1 minute'
      from generate_series(1, ${n}::int) t, generate_series(0, ${c - 1}::int) g`;
    await tx`insert into public.enrollments
      select t::bigint * ${ID_SPAN}::bigint + g, t,
        t::bigint * ${ID_SPAN}::bigint + (g % ${c}::int),
        md5('u:' || t || ':' || ((g::bigint * 7919) % ${u}::int))::uuid,
        (array['invited', 'active', 'completed'])[1 + g % 3],
        jsonb_build_object('step', g % 10), timestamptz '2025-03-01 00:00:00+00' + g * interval '1 s',
        timestamptz '2025-07-01 00:00:00+00' + g * interval '1 second'
      from generate_series(1, ${n}::int) t, generate_series(0, ${e - 1}::int) g`;
  });
  for (const t of ["users", "campaigns", "enrollments"]) {
    await sql`vacuum analyze ${sql("public." + t)}`;
  }
}

/** One manual snapshot per tenant, `concurrency` at a time. */
export async function snapshotFleet(sql: Sql, tenants: string[], concurrency = 2): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < tenants.length) await takeSnapshot(sql, { tenantId: tenants[next++] });
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

export interface WriterDuringMaintenance {
  idle_p99_ms: number;
  maintenance_p99_ms: number;
  /** maintenance_p99_ms / idle_p99_ms: the writer_p99_during_maintenance_ratio. */
  ratio: number;
  idle_updates: number;
  maintenance_updates: number;
  /** Maintenance cycles run while the writer wrote, and what they did in all. */
  cycles: number;
  made: number;
  detached: number;
  dropped: number;
  /** The longest single update while the job ran, and with an open restore holding the log. */
  maintenance_max_ms: number;
  open_restore_max_ms?: number;
}

/**
 * Another tenant's one-row update (a captured table) timed back to back: first idle, then while
 * the maintenance job runs cycle after cycle, each cycle having expired days to detach and drop
 * (`expiredDays` old days made and filled with `rowsPerDay` rows) and future days to make (the
 * last `aheadDays` of the horizon removed first). The defaults, 1 and 1, are a daily run's work:
 * the horizon moves a day, a day expires. `extra` runs in each cycle too (bench:fleet's
 * retention). With `openRestore`, a second phase keeps a transaction that wrote the log open
 * (as a restore or drill does) while the job runs, and reports the writer's longest wait.
 * `url` is the database's: the writer has a connection of its own.
 */
export async function writerP99DuringMaintenance(
  sql: Sql,
  options: {
    url: string;
    writerTenant: number;
    holderTenant?: number;
    seconds: number;
    expiredDays?: number;
    rowsPerDay?: number;
    aheadDays?: number;
    extra?: (sql: Sql) => Promise<void>;
    openRestore?: boolean;
  },
): Promise<WriterDuringMaintenance> {
  const expiredDays = options.expiredDays ?? 1;
  const rowsPerDay = options.rowsPerDay ?? 2000;
  const aheadDays = options.aheadDays ?? 1;
  // Warm up, then idle.
  await timedWrites(options.url, options.writerTenant, 1);
  const idle = (await timedWrites(options.url, options.writerTenant, options.seconds)).map((x) =>
    x.ms
  );

  let cycles = 0;
  let made = 0;
  let detached = 0;
  let dropped = 0;
  let stop = false;
  let base = 0; // each cycle's expired days are days nobody used before
  /** When the job itself ran: the writes that started then are the ones measured. */
  const jobRuns: [number, number][] = [];
  const cycle = async () => {
    // Setup, not measured: expired days with rows, and the horizon's last days removed.
    await sql`select pitr.ensure_change_partitions(date '2001-01-01' + ${base}::int, ${expiredDays}::int)`;
    await sql`insert into pitr.changes (changed_at, tenant_id, relid, op, pk, old_row)
      select timestamptz '2001-01-01 00:00+00' + (${base}::int + d) * interval '1 day'
          + g * interval '1 second', '999999', 'public.users'::regclass, 'U', g::text,
        repeat('x', 200)
      from generate_series(0, ${expiredDays - 1}::int) d, generate_series(1, ${rowsPerDay}::int) g`;
    base += expiredDays;
    const [{ ahead }] = await sql<{ ahead: number }[]>`
      select log_days_ahead as ahead from pitr.settings`;
    for (let i = 0; i < aheadDays; i++) {
      const [{ name }] = await sql<{ name: string }[]>`
        select 'changes_' || to_char((now() at time zone 'UTC')::date + ${ahead - i}::int,
          'YYYYMMDD') as name`;
      try {
        await sql`select pitr.detach_change_partition(${name})`;
        await sql`select pitr.drop_detached_change(${"changes_detached_" + name.slice(8)})`;
      } catch (e) {
        // An open restore holds the log (the second phase): this cycle makes fewer days.
        if ((e as { code?: string }).code !== "55P03") throw e;
      }
    }
    await sleep(50);
    // The job (and bench:fleet's retention), measured.
    const t0 = performance.now();
    await sql`call pitr.maintain_change_log()`.simple();
    if (options.extra) await options.extra(sql);
    jobRuns.push([t0, performance.now()]);
    const [r] = await sql<{ made: number; detached: number; dropped: number }[]>`
      select made, detached, dropped from pitr.log_maintenance_runs order by id desc limit 1`;
    made += r.made;
    detached += r.detached;
    dropped += r.dropped;
    cycles++;
    await sleep(50);
  };
  const inJob = (writes: { start: number; ms: number }[]) =>
    writes.filter((x) => jobRuns.some(([a, b]) => x.start + x.ms >= a && x.start <= b))
      .map((x) => x.ms);

  const maintenance = (async () => {
    while (!stop) await cycle();
  })();
  const all = await timedWrites(options.url, options.writerTenant, options.seconds);
  stop = true;
  await maintenance;
  const during = inJob(all);

  let open_restore_max_ms: number | undefined;
  if (options.openRestore) {
    // A restore's transaction holds the log for 2 s at a time while the job keeps trying.
    const holderTenant = options.holderTenant ?? options.writerTenant + 1;
    jobRuns.length = 0;
    stop = false;
    const holder = (async () => {
      while (!stop) {
        await sql.begin(async (tx) => {
          await tx`update public.users set updated_at = updated_at
            where tenant_id = ${holderTenant} and member_no = 0`;
          await sleep(2000);
        });
      }
    })();
    const jobs = (async () => {
      while (!stop) await cycle();
    })();
    const held = await timedWrites(options.url, options.writerTenant, options.seconds);
    stop = true;
    await Promise.all([holder, jobs]);
    open_restore_max_ms = Math.max(...held.map((x) => x.ms));
  }
  const idleP99 = percentile(idle, 99);
  const duringP99 = percentile(during, 99);
  return {
    idle_p99_ms: idleP99,
    maintenance_p99_ms: duringP99,
    ratio: duringP99 / idleP99,
    idle_updates: idle.length,
    maintenance_updates: during.length,
    cycles,
    made,
    detached,
    dropped,
    maintenance_max_ms: Math.max(...during),
    open_restore_max_ms,
  };
}

export interface DrillCoverage {
  /** The longest single call, in seconds (the drill_call_max_s). */
  drill_call_max_s: number;
  /** Tenants drilled well within the window / tenants with a snapshot (drill_fleet_covered). */
  drill_fleet_covered: number;
  calls: number;
  budget_s: number;
  tenants: number;
  drilled_ok: number;
  failed: number;
  mean_drill_s: number;
}

/**
 * A night window simulated by calling the fleet drill back to back (the schedule spaces the calls
 * out; the drilling is the same): at most `windowCalls` calls of `budgetS` seconds each, stopping
 * once every tenant with a snapshot was drilled well since the start.
 */
export async function drillFleetCoverage(
  sql: Sql,
  options: { budgetS: number; windowCalls: number },
): Promise<DrillCoverage> {
  const [{ since }] = await sql<{ since: Date }[]>`select clock_timestamp() as since`;
  const [{ tenants }] = await sql<{ tenants: number }[]>`
    select count(distinct tenant_id)::int as tenants from public.backup_snapshots
    where kind = 'manual'`;
  let callMax = 0;
  let calls = 0;
  let failed = 0;
  let drilledOk = 0;
  const durations: number[] = [];
  while (calls < options.windowCalls) {
    const t0 = performance.now();
    const run = await drillFleet(sql, { budgetMs: options.budgetS * 1000 });
    callMax = Math.max(callMax, (performance.now() - t0) / 1000);
    calls++;
    failed += run.drills.filter((d) => !d.ok).length;
    durations.push(...run.drills.map((d) => d.duration_ms / 1000));
    const [{ n }] = await sql<{ n: number }[]>`
      select count(distinct tenant_id)::int as n from public.backup_pitr_drills
      where ok and created_at >= ${since}`;
    drilledOk = n;
    if (drilledOk >= tenants) break;
  }
  return {
    drill_call_max_s: callMax,
    drill_fleet_covered: tenants === 0 ? 1 : drilledOk / tenants,
    calls,
    budget_s: options.budgetS,
    tenants,
    drilled_ok: drilledOk,
    failed,
    mean_drill_s: durations.reduce((a, b) => a + b, 0) / Math.max(1, durations.length),
  };
}

async function main(): Promise<number> {
  const quick = Deno.args.includes("--quick");
  const size = quick
    ? { tenants: 200, users: 40, campaigns: 10, enrollments: 50 }
    : { tenants: 500, users: 100, campaigns: 25, enrollments: 175 };
  const budgetS = quick ? 5 : 100;
  const writerSeconds = quick ? 4 : 15;
  const started = performance.now();
  const configured = configuredDatabaseUrl();
  const server = configured ? undefined : await startEmbedded(".pitr/bench-fleetops-pg");
  const adminUrl = configured ?? server!.url;
  const admin = connect(adminUrl, { max: 1 });
  const name = `pitr_fleetops_${crypto.randomUUID().slice(0, 8)}`;
  const url = withDatabase(adminUrl, name);
  let sql: Sql | undefined;
  let code = 0;
  let json: Record<string, number> | undefined;
  let table: string[][] = [];
  try {
    await admin`create database ${admin(name)}`;
    sql = connect(url, { max: 6 });
    await migrate(sql);
    let t0 = performance.now();
    await buildFleet(sql, size);
    const rowsPerTenant = size.users + size.campaigns + size.enrollments;
    log(
      `${size.tenants} tenants of ${rowsPerTenant} rows in ${
        fmt((performance.now() - t0) / 1000)
      } s`,
    );
    await sql`select pitr.capture_enable('public.users')`;
    const ids = Array.from({ length: size.tenants }, (_, i) => String(i + 1));
    t0 = performance.now();
    await snapshotFleet(sql, ids);
    log(`${ids.length} snapshots in ${fmt((performance.now() - t0) / 1000)} s`);

    const w = await writerP99DuringMaintenance(sql, {
      url,
      writerTenant: 1,
      holderTenant: 2,
      seconds: writerSeconds,
      openRestore: true,
    });
    // The same with three days' work a run (a job that missed two days), as a stress figure.
    const w3 = await writerP99DuringMaintenance(sql, {
      url,
      writerTenant: 1,
      seconds: writerSeconds,
      expiredDays: 3,
      aheadDays: 3,
    });
    log(`writer, 3 days a run: ${JSON.stringify(w3)}`);
    log(`writer: ${JSON.stringify(w)}`);
    const d = await drillFleetCoverage(sql, { budgetS, windowCalls: 120 });
    log(`drills: ${JSON.stringify(d)}`);
    // What the schedule covers a night at this fleet's mean drill time (120 calls of 100 s).
    const perNight = Math.floor(120 * 100 / Math.max(d.mean_drill_s, 1e-3));
    table = [
      ["writer p99 idle (ms)", fmt(w.idle_p99_ms)],
      ["writer p99 during maintenance (ms)", fmt(w.maintenance_p99_ms)],
      ["writer_p99_during_maintenance_ratio (goal <= 2)", fmt(w.ratio)],
      ["the same, 3 days made and dropped a run", fmt(w3.ratio)],
      ["writer max during maintenance (ms)", fmt(w.maintenance_max_ms)],
      ["writer max, job vs an open restore (ms)", fmt(w.open_restore_max_ms ?? NaN)],
      [
        "maintenance cycles / made / detached / dropped",
        `${w.cycles} / ${w.made} / ${w.detached} / ${w.dropped}`,
      ],
      [`drill calls (budget ${budgetS} s)`, String(d.calls)],
      ["drill_call_max_s (goal <= 100)", fmt(d.drill_call_max_s)],
      ["drill_fleet_covered (goal 1.0)", fmt(d.drill_fleet_covered)],
      ["mean drill (s)", fmt(d.mean_drill_s)],
      ["tenants a night at this mean (120 x 100 s)", String(perNight)],
    ];
    json = {
      writer_p99_during_maintenance_ratio: round3(w.ratio),
      writer_p99_ratio_3_days_a_run: round3(w3.ratio),
      writer_idle_p99_ms: round3(w.idle_p99_ms),
      writer_maintenance_p99_ms: round3(w.maintenance_p99_ms),
      writer_open_restore_max_ms: round3(w.open_restore_max_ms ?? NaN),
      drill_call_max_s: round3(d.drill_call_max_s),
      drill_fleet_covered: round3(d.drill_fleet_covered),
      drill_budget_s: budgetS,
      drill_calls: d.calls,
      tenants: size.tenants,
    };
  } catch (e) {
    console.error("[bench:fleetops] failed:", e);
    code = 1;
  } finally {
    await sql?.end({ timeout: 5 });
    await admin`drop database if exists ${admin(name)} with (force)`.catch((e) => {
      console.error(`[bench:fleetops] could not drop ${name}:`, e);
    });
    await admin.end({ timeout: 5 });
    await server?.stop();
  }
  log(`finished in ${fmt((performance.now() - started) / 1000)} s`);
  if (json) {
    const w = Math.max(...table.map((r) => r[0].length));
    console.log(`${"figure".padEnd(w)} | value`);
    console.log(`${"-".repeat(w)}-+------`);
    for (const [k, v] of table) console.log(`${k.padEnd(w)} | ${v}`);
    console.log(JSON.stringify(json));
  }
  return code;
}

if (import.meta.main) Deno.exit(await main());
