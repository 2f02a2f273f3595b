// Drills: restore a tenant's latest snapshot in a transaction that is always rolled back, to
// prove the backup restores and to time it. It must never leave a change behind but its record.
import type { Sql } from "../db/client.ts";
import { transaction } from "../db/transaction.ts";
import { applySnapshot } from "./apply.ts";
import { refreshForeignKeys } from "./catalog.ts";
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

/** How long a drill waits for the tenant's turn, as applySnapshot waits for its lock. */
const LOCK_WAIT_MS = 5000;

class RollBack extends Error {
  constructor(readonly rows: number, readonly tables: number) {
    super("drill rolled back");
  }
}

export async function runDrills(sql: Sql, tenantId?: string): Promise<DrillResult[]> {
  const tenants = tenantId === undefined
    ? (await sql<{ tenant_id: string }[]>`
        select distinct tenant_id from public.backup_snapshots where kind = 'manual'
        order by tenant_id`).map((r) => r.tenant_id)
    : [tenantId];
  await refreshForeignKeys(sql);
  const results: DrillResult[] = [];
  for (const tenant of tenants) results.push(await drillTenant(sql, tenant));
  return results;
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
