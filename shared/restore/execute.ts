// Execute: runs a recorded restore in one transaction that either commits verified or leaves the
// database as it found it, and writes the outcome to its history row. It must never report a
// restore completed that did not commit.
import type { Sql } from "../db/client.ts";
import { applySnapshot } from "./apply.ts";
import { refreshForeignKeys } from "./catalog.ts";
import { describeFailure } from "./failure.ts";
import { getStatus, Progress, type RestoreStatus } from "./history.ts";

export interface ExecuteOptions {
  lockTimeoutMs?: number;
}

export async function executeRestore(
  sql: Sql,
  rollbackId: string,
  options: ExecuteOptions = {},
): Promise<RestoreStatus> {
  const pending = await getStatus(sql, rollbackId);
  const [{ requested_tables }] = await sql<{ requested_tables: string[] | null }[]>`
    select requested_tables from public.backup_pitr_rollback_history where id = ${rollbackId}`;
  const progress = new Progress(sql, rollbackId);
  try {
    // Outside the restore's transaction, so that restores of other tenants never wait on it.
    await refreshForeignKeys(sql);
    const applied = await sql.begin(async (tx) => {
      const [{ txid }] = await tx<{ txid: string }[]>`select txid_current()::text as txid`;
      await progress.start(txid);
      return await applySnapshot(tx, pending.snapshot_id, {
        strategy: pending.strategy,
        tables: requested_tables ?? undefined,
        lockTimeoutMs: options.lockTimeoutMs,
        onPlan: (_plan, rowsTotal, fkChecks, undoId) =>
          progress.planned(rowsTotal, fkChecks, undoId),
        onStep: (s, work) => progress.advance(s, work),
      });
    });
    await progress.completed(applied.tables);
  } catch (e) {
    const f = describeFailure(e);
    await progress.failed(f.code, f.message, f.table);
  }
  return await getStatus(sql, rollbackId);
}
