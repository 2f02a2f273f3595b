// Drills: restore a tenant's latest snapshot in a transaction that is always rolled back, to
// prove the backup restores and to time it; across the fleet, within a time budget per call, and
// the report of them. It must never leave a change behind but its record.
import type { Sql } from "../db/client.ts";
import { transaction } from "../db/transaction.ts";
import { applySnapshot } from "./apply.ts";
import { refreshForeignKeys } from "./catalog.ts";
import { Conflict } from "./errors.ts";
import { describeFailure } from "./failure.ts";
import { tenantTurn } from "./lock.ts";

export interface DrillResult {
  tenant_id: string;
  snapshot_id: string | null;
  ok: boolean;
  duration_ms: number;
  rows: number;
  message: string;
}

/** One fleet call: the drills it ran, its budget, what it spent, and the tenants it left. */
export interface DrillRun {
  drills: DrillResult[];
  budget_ms: number;
  elapsed_ms: number;
  /** Tenants of the fleet not drilled by this call (the next call starts with them). */
  pending: number;
}

/** The longest budget a call may ask for: inside the Edge Function's 150 s wall clock. */
export const MAX_BUDGET_MS = 140_000;

/**
 * A drill is started only if this multiple of its estimate fits what is left: a drill's time varies
 * (measured: a 500-tenant call with estimates taken as they were ran 0.06 s over its 100 s).
 */
const ESTIMATE_MARGIN = 1.25;

/**
 * The share of the budget no drill may start into: the call's own closing work and a drill that
 * outruns its margin fit there (measured: a 2,000-tenant call of 0.1 s drills ended a fraction of
 * a millisecond past its 100 s without it).
 */
const RESERVE_SHARE = 0.01;

/** How long a drill waits for the tenant's turn, as applySnapshot waits for its lock. */
const LOCK_WAIT_MS = 5000;

class RollBack extends Error {
  constructor(readonly rows: number, readonly tables: number) {
    super("drill rolled back");
  }
}

/** One tenant's drill, or (without a tenant) one fleet call with the configured budget. */
export async function runDrills(sql: Sql, tenantId?: string): Promise<DrillResult[]> {
  if (tenantId === undefined) return (await drillFleet(sql)).drills;
  await refreshForeignKeys(sql);
  return [await drillTenant(sql, tenantId)];
}

/**
 * Drills the tenants least recently drilled well (never drilled, or whose last good drill is the
 * oldest; a failed drill leaves that time as it was, so the tenant comes first again), until the
 * budget is spent. A drill is started only if 1.25 times its estimate (the tenant's last good
 * drill's duration, else its last drill's, else its snapshot's rows at the fleet's recent rate)
 * fits what is left of the budget less a 1% reserve; the first of a call always starts, so that a
 * tenant longer than any budget is drilled once its turn comes rather than never. One call at a time (a lease in
 * pitr.drill_fleet_lease).
 */
export async function drillFleet(
  sql: Sql,
  options: { budgetMs?: number } = {},
): Promise<DrillRun> {
  const started = performance.now();
  const [{ configured }] = await sql<{ configured: number }[]>`
    select (extract(epoch from drill_budget) * 1000)::int as configured from pitr.settings`;
  const budget_ms = Math.min(options.budgetMs ?? configured, MAX_BUDGET_MS);
  const holder = crypto.randomUUID();
  // Past the budget by ten minutes: a call that died frees it by then.
  const leaseMs = budget_ms + 600_000;
  const [lease] = await sql`
    update pitr.drill_fleet_lease
    set holder = ${holder}, expires_at = clock_timestamp() + ${leaseMs} * interval '1 ms'
    where expires_at < clock_timestamp() or holder is null
    returning holder`;
  if (!lease) {
    throw new Conflict(
      "drills_running",
      "another drill call is running; try again when it is done",
    );
  }
  try {
    const queue = await sql<{ tenant_id: string; estimate_ms: number | null }[]>`
      with rate as (
        select sum(duration_ms)::float8 / nullif(sum(rows), 0) as ms_per_row
        from (select duration_ms, rows from public.backup_pitr_drills where ok and rows > 0
              order by created_at desc limit 1000) recent)
      select r.tenant_id,
        coalesce(r.rto_ms, r.last_duration_ms,
          round(r.snapshot_rows * (select ms_per_row from rate)))::int as estimate_ms
      from pitr.drill_report r
      where r.snapshot_id is not null
      order by r.last_ok_at asc nulls first, r.last_drill_at asc nulls first, r.tenant_id`;
    const drills: DrillResult[] = [];
    for (const t of queue) {
      const left = budget_ms * (1 - RESERVE_SHARE) - (performance.now() - started);
      if (drills.length > 0 && left <= 0) break;
      // Passed over, not dropped: its place in the order is kept for the next call.
      if (drills.length > 0 && (t.estimate_ms ?? 0) * ESTIMATE_MARGIN > left) continue;
      // Before each drill, as execute does before each restore (a no-op when nothing changed): a
      // key added during a long call would otherwise fail every later drill concurrent_change.
      await refreshForeignKeys(sql);
      drills.push(await drillTenant(sql, t.tenant_id));
    }
    return {
      drills,
      budget_ms,
      elapsed_ms: Math.round(performance.now() - started),
      pending: queue.length - drills.length,
    };
  } finally {
    await sql`update pitr.drill_fleet_lease set holder = null, expires_at = '-infinity'
      where holder = ${holder}`;
  }
}

/** Per tenant: the last drill, its duration, its outcome; failures first, then never drilled. */
export interface DrillReportRow {
  tenant_id: string;
  status: "failed" | "never" | "ok";
  last_drill_at: string | null;
  last_duration_ms: number | null;
  last_rows: number | null;
  last_message: string | null;
  last_snapshot_id: string | null;
  last_ok_at: string | null;
  /** The last good drill's duration: the measured restore time objective. */
  rto_ms: number | null;
  failures_since_ok: number;
  snapshot_id: string | null;
}

export interface DrillReport {
  summary: {
    tenants: number;
    failed: number;
    never: number;
    ok: number;
    max_rto_ms: number | null;
  };
  tenants: DrillReportRow[];
}

export async function drillReport(
  sql: Sql,
  options: { tenantId?: string; limit?: number } = {},
): Promise<DrillReport> {
  const only = options.tenantId ?? null;
  const rows = await sql<DrillReportRow[]>`
    select tenant_id, status,
      to_char(last_drill_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as last_drill_at,
      last_duration_ms, last_rows::float8 as last_rows, last_message, last_snapshot_id,
      to_char(last_ok_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as last_ok_at,
      rto_ms, failures_since_ok::int as failures_since_ok, snapshot_id
    from pitr.drill_report
    where ${only}::text is null or tenant_id = ${only}
    order by report_rank, last_drill_at asc nulls first, tenant_id
    limit ${options.limit ?? 1000}`;
  const [s] = await sql<
    { tenants: number; failed: number; never: number; ok: number; max_rto_ms: number | null }[]
  >`
    select count(*)::int as tenants, (count(*) filter (where status = 'failed'))::int as failed,
      (count(*) filter (where status = 'never'))::int as never,
      (count(*) filter (where status = 'ok'))::int as ok, max(rto_ms) as max_rto_ms
    from pitr.drill_report
    where ${only}::text is null or tenant_id = ${only}`;
  return { summary: { ...s }, tenants: rows.map((r) => ({ ...r })) };
}

async function drillTenant(sql: Sql, tenantId: string): Promise<DrillResult> {
  const [latest] = await sql<{ id: string; total_rows: string }[]>`
    select id, total_rows from public.backup_snapshots
    where tenant_id = ${tenantId} and kind = 'manual'
    order by created_at desc limit 1`;
  const started = performance.now();
  let result: Omit<DrillResult, "duration_ms">;
  if (!latest) {
    result = {
      tenant_id: tenantId,
      snapshot_id: null,
      ok: false,
      rows: 0,
      message: "no snapshot to drill",
    };
  } else {
    try {
      await transaction(sql, async (tx) => {
        const applied = await applySnapshot(tx, latest.id, { strategy: "overwrite", drill: true });
        throw new RollBack(
          applied.plan.steps.reduce((n, t) => n + t.rows, 0),
          applied.tables.length,
        );
      }, { turn: tenantTurn(sql, tenantId, LOCK_WAIT_MS) });
      throw new Error("unreachable: a drill transaction committed");
    } catch (e) {
      if (e instanceof RollBack) {
        result = {
          tenant_id: tenantId,
          snapshot_id: latest.id,
          ok: true,
          rows: e.rows,
          message: `restored and verified ${e.rows} rows in ${e.tables} tables, then rolled back`,
        };
      } else {
        const f = describeFailure(e);
        result = {
          tenant_id: tenantId,
          snapshot_id: latest.id,
          ok: false,
          rows: 0,
          message: `${f.code}: ${f.message}`,
        };
      }
    }
  }
  const duration_ms = Math.round(performance.now() - started);
  await sql`insert into public.backup_pitr_drills (tenant_id, snapshot_id, ok, duration_ms, rows, message)
    values (${tenantId}, ${result.snapshot_id}, ${result.ok}, ${duration_ms}, ${result.rows}, ${result.message})`;
  return { ...result, duration_ms };
}
