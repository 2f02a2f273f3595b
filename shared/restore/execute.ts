// Execute: runs a recorded restore in one transaction that either commits verified or leaves the
// database as it found it, and writes the outcome to its history row. It must never report a
// restore completed that did not commit ("completed" is written inside the restore's
// transaction), nor leave it running once its session is gone.
import type { Sql } from "../db/client.ts";
import { transaction } from "../db/transaction.ts";
import { type ApplyPhase, applySnapshot } from "./apply.ts";
import type { Choice } from "./select.ts";
import { refreshForeignKeys } from "./catalog.ts";
import { describeFailure } from "./failure.ts";
import { tenantTurn } from "./lock.ts";
import {
  CANCELLED,
  Cancelled,
  getStatus,
  heartbeatMs,
  Progress,
  type RestoreStatus,
} from "./history.ts";

/** "start": the restore's session is open, before its first statement; "commit": before COMMIT. */
export type RestorePhase = "start" | ApplyPhase | "commit";

export interface ExecuteOptions {
  /** How long a statement waits for a row lock held by another session (default 5 s). */
  lockTimeoutMs?: number;
  /** The longest a single statement of the restore may run; 0 means no limit (the default). */
  statementTimeoutMs?: number;
  /**
   * How long the restore's session may sit idle inside its transaction before the server ends
   * it (default 60 s): a process that hung or froze mid-restore does not hold the tenant's rows.
   */
  idleInTransactionTimeoutMs?: number;
  /** Awaited as each phase begins, on the restore's open transaction: a test's injection point. */
  onPhase?: (phase: RestorePhase) => Promise<void>;
}

export function timeoutsFromEnv(): ExecuteOptions {
  return {
    lockTimeoutMs: Number(Deno.env.get("PITR_LOCK_TIMEOUT_MS") ?? 5000),
    statementTimeoutMs: Number(Deno.env.get("PITR_STATEMENT_TIMEOUT_MS") ?? 0),
    idleInTransactionTimeoutMs: Number(
      Deno.env.get("PITR_IDLE_IN_TRANSACTION_TIMEOUT_MS") ?? 60_000,
    ),
  };
}

export async function executeRestore(
  sql: Sql,
  rollbackId: string,
  options: ExecuteOptions = timeoutsFromEnv(),
): Promise<RestoreStatus> {
  const pending = await getStatus(sql, rollbackId);
  if (pending.status !== "pending") return pending;
  const [{ requested_tables, selection, with_dependencies }] = await sql<
    { requested_tables: string[] | null; selection: Choice[] | null; with_dependencies: boolean }[]
  >`select requested_tables, selection, with_dependencies
    from public.backup_pitr_rollback_history where id = ${rollbackId}`;
  const progress = new Progress(sql, rollbackId);
  const phase = options.onPhase ?? (() => Promise.resolve());
  const defaults = timeoutsFromEnv();
  const lockTimeout = options.lockTimeoutMs ?? defaults.lockTimeoutMs!;
  const idleTimeout = options.idleInTransactionTimeoutMs ?? defaults.idleInTransactionTimeoutMs!;
  const statementTimeout = options.statementTimeoutMs ?? 0;
  // The heartbeat goes on while a long statement runs, and proves the session alive as well as
  // the process: once the session is gone, the restore is failed and every wait on it ends.
  const sessionGone = new AbortController();
  const heartbeat = setInterval(async () => {
    try {
      if (await progress.beat() === "gone") {
        sessionGone.abort("the restore's database session is gone");
      }
    } catch {
      // The next beat tries again; a stale heartbeat is what reports a dead process.
    }
  }, heartbeatMs());
  try {
    // Outside the restore's transaction, so that restores of other tenants never wait on it.
    await refreshForeignKeys(sql);
    await transaction(sql, async (tx) => {
      await phase("start");
      // Its first statement: who the session is (pid and backend_start, for the heartbeat and a
      // cancel) and its timeouts, so that no wait of this transaction is without an end.
      const [s] = await tx<{ txid: string; pid: number; backend_start: string }[]>`
        select txid_current()::text as txid, pg_backend_pid() as pid,
          (select backend_start::text from pg_stat_activity where pid = pg_backend_pid())
            as backend_start,
          set_config('lock_timeout', ${`${lockTimeout}ms`}, true),
          -- 0 leaves the role's own setting.
          case when ${statementTimeout}::int > 0
            then set_config('statement_timeout', ${`${statementTimeout}ms`}, true) end,
          case when ${idleTimeout}::int > 0
            then set_config('idle_in_transaction_session_timeout', ${`${idleTimeout}ms`}, true) end`;
      if (!await progress.start(s.txid, s.pid, s.backend_start)) throw new Cancelled();
      const applied = await applySnapshot(tx, pending.snapshot_id, {
        strategy: pending.strategy,
        tables: requested_tables ?? undefined,
        selection: selection ?? undefined,
        withDependencies: with_dependencies,
        lockTimeoutMs: options.lockTimeoutMs,
        // A statement of its own on the pool: its lock on the sequence ends with it.
        advanceSequence: async (seq, value) => {
          await sql`select pitr.advance_sequence(${seq}::regclass, ${value})`;
        },
        onPlan: (plan, rowsTotal, fkChecks, undoId) =>
          progress.planned(rowsTotal, fkChecks, undoId, plan.dependencies_added),
        onStep: (s, work) => progress.advance(s, work),
        onPhase: phase,
      });
      await progress.completedIn(tx, applied.tables);
      await phase("commit");
    }, {
      signal: sessionGone.signal,
      turn: tenantTurn(sql, pending.tenant_id, options.lockTimeoutMs ?? 5000),
      urgent: true,
    });
  } catch (e) {
    const cancelled = e instanceof Cancelled || await progress.cancelRequested().catch(() => false);
    const f = cancelled
      ? { code: "cancelled", message: CANCELLED, table: undefined }
      : describeFailure(e);
    await progress.failed(cancelled ? "cancelled" : "failed", f.code, f.message, f.table);
  } finally {
    clearInterval(heartbeat);
  }
  return await getStatus(sql, rollbackId);
}
