// Execute: runs a recorded restore in one transaction that either commits verified or leaves the
// database as it found it, and writes the outcome to its history row. It must never report a
// restore completed that did not commit: "completed" is written inside the restore's transaction.
import type { Sql } from "../db/client.ts";
import { transaction } from "../db/transaction.ts";
import { applySnapshot } from "./apply.ts";
import { refreshForeignKeys } from "./catalog.ts";
import { describeFailure } from "./failure.ts";
import { tenantTurn } from "./lock.ts";
import { Cancelled, getStatus, HEARTBEAT_MS, Progress, type RestoreStatus } from "./history.ts";

export interface ExecuteOptions {
  /** How long a statement waits for a row lock held by another session (default 5 s). */
  lockTimeoutMs?: number;
  /** The longest a single statement of the restore may run; 0 means no limit (the default). */
  statementTimeoutMs?: number;
}

export function timeoutsFromEnv(): ExecuteOptions {
  return {
    lockTimeoutMs: Number(Deno.env.get("PITR_LOCK_TIMEOUT_MS") ?? 5000),
    statementTimeoutMs: Number(Deno.env.get("PITR_STATEMENT_TIMEOUT_MS") ?? 0),
  };
}

export async function executeRestore(
  sql: Sql,
  rollbackId: string,
  options: ExecuteOptions = timeoutsFromEnv(),
): Promise<RestoreStatus> {
  const pending = await getStatus(sql, rollbackId);
  if (pending.status !== "pending") return pending;
  const [{ requested_tables }] = await sql<{ requested_tables: string[] | null }[]>`
    select requested_tables from public.backup_pitr_rollback_history where id = ${rollbackId}`;
  const progress = new Progress(sql, rollbackId);
  // The heartbeat goes on while a long statement runs; a stale one means this process died.
  const heartbeat = setInterval(() => progress.beat().catch(() => {}), HEARTBEAT_MS);
  try {
    // Outside the restore's transaction, so that restores of other tenants never wait on it.
    await refreshForeignKeys(sql);
    await transaction(sql, async (tx) => {
      const [{ txid, pid }] = await tx<{ txid: string; pid: number }[]>`
        select txid_current()::text as txid, pg_backend_pid() as pid`;
      if (!await progress.start(txid, pid)) throw new Cancelled();
      if (options.statementTimeoutMs) {
        await tx`select set_config('statement_timeout', ${`${options.statementTimeoutMs}ms`}, true)`;
      }
      const applied = await applySnapshot(tx, pending.snapshot_id, {
        strategy: pending.strategy,
        tables: requested_tables ?? undefined,
        lockTimeoutMs: options.lockTimeoutMs,
        onPlan: (_plan, rowsTotal, fkChecks, undoId) =>
          progress.planned(rowsTotal, fkChecks, undoId),
        onStep: (s, work) => progress.advance(s, work),
      });
      clearInterval(heartbeat);
      await progress.completedIn(tx, applied.tables);
    }, { turn: tenantTurn(sql, pending.tenant_id, options.lockTimeoutMs ?? 5000), urgent: true });
  } catch (e) {
    const cancelled = e instanceof Cancelled || await progress.cancelRequested().catch(() => false);
    const f = cancelled
      ? {
        code: "cancelled",
        message: "the restore was cancelled and rolled back",
        table: undefined,
      }
      : describeFailure(e);
    await progress.failed(cancelled ? "cancelled" : "failed", f.code, f.message, f.table);
  } finally {
    clearInterval(heartbeat);
  }
  return await getStatus(sql, rollbackId);
}
