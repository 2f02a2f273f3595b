// The restore's history row: created pending, then running with progress, then an outcome.
// Progress is written on the pool, never on the restore's own transaction, whose writes stay
// invisible until commit.
import type { Sql } from "../db/client.ts";
import { Conflict, NotFound, PG, sqlState } from "./errors.ts";
import type { Strategy } from "./plan.ts";

export interface RestoreRequest {
  snapshotId: string;
  tenantId: string;
  tables?: string[];
  strategy: Strategy;
  idempotencyKey?: string;
  requestHash?: string;
  initiatedBy?: string;
}

/**
 * Records a pending restore. The partial unique index on active restores decides atomically that
 * a tenant has one at a time; a reused idempotency key returns the first restore's id.
 */
export async function createRestore(
  sql: Sql,
  r: RestoreRequest,
): Promise<{ id: string; reused: boolean }> {
  if (r.idempotencyKey) {
    const [prior] = await sql<{ id: string; request_hash: string }[]>`
      select id, request_hash from public.backup_pitr_rollback_history
      where tenant_id = ${r.tenantId} and idempotency_key = ${r.idempotencyKey}`;
    if (prior) {
      if (prior.request_hash !== (r.requestHash ?? null)) {
        throw new Conflict(
          "idempotency_key_reused",
          "this Idempotency-Key was used with another request",
        );
      }
      return { id: prior.id, reused: true };
    }
  }
  try {
    const [row] = await sql<{ id: string }[]>`
      insert into public.backup_pitr_rollback_history
        (tenant_id, snapshot_id, strategy, requested_tables, idempotency_key, request_hash, initiated_by)
      values (${r.tenantId}, ${r.snapshotId}, ${r.strategy}, ${r.tables ?? null},
        ${r.idempotencyKey ?? null}, ${r.requestHash ?? null}, ${r.initiatedBy ?? null})
      returning id`;
    return { id: row.id, reused: false };
  } catch (e) {
    if (sqlState(e) !== PG.UNIQUE_VIOLATION) throw e;
    const constraint = (e as { constraint_name?: string }).constraint_name;
    if (constraint === "backup_pitr_idempotency") return await createRestore(sql, r);
    throw new Conflict(
      "restore_in_progress",
      `a restore of tenant ${r.tenantId} is already pending or running`,
    );
  }
}

export interface Step {
  step: string;
  table?: string;
  rows?: number;
  at: string;
}

export class Progress {
  private rowsDone = 0;
  private total = 1;
  constructor(private sql: Sql, readonly rollbackId: string) {}

  async start(txid: string) {
    await this.sql`update public.backup_pitr_rollback_history
      set status = 'running', started_at = coalesce(started_at, clock_timestamp()),
        heartbeat_at = clock_timestamp(), current_step = 'preparing',
        transaction_ids = transaction_ids || ${txid}::text
      where id = ${this.rollbackId}`;
  }

  async planned(rowsTotal: number, fks: unknown, undoSnapshotId: string | null) {
    this.total = Math.max(rowsTotal, 1);
    await this.sql`update public.backup_pitr_rollback_history
      set rows_total = ${rowsTotal}, fk_constraints_handled = ${this.sql.json(fks as never)},
        undo_snapshot_id = ${undoSnapshotId}, heartbeat_at = clock_timestamp()
      where id = ${this.rollbackId}`;
  }

  /** Adds rows to the work done and appends a step; progress stays below 100 until the end. */
  async advance(step: Omit<Step, "at">, rows: number) {
    this.rowsDone += rows;
    const pct = Math.min(99, Math.floor((this.rowsDone / this.total) * 10000) / 100);
    const entry = { ...step, at: new Date().toISOString() };
    await this.sql`update public.backup_pitr_rollback_history
      set rows_done = ${this.rowsDone}, progress_pct = ${pct},
        current_step = ${step.table ? `${step.step} ${step.table}` : step.step},
        restoration_steps = restoration_steps || ${this.sql.json([entry])},
        heartbeat_at = clock_timestamp()
      where id = ${this.rollbackId}`;
  }

  async completed(tables: string[]) {
    await this.sql`update public.backup_pitr_rollback_history
      set status = 'completed', progress_pct = 100, rows_done = coalesce(rows_total, rows_done),
        current_step = 'completed', tables_restored = ${tables},
        completed_at = clock_timestamp(), heartbeat_at = clock_timestamp()
      where id = ${this.rollbackId}`;
  }

  async failed(code: string, message: string, table: string | undefined) {
    await this.sql`update public.backup_pitr_rollback_history
      set status = 'failed', current_step = 'failed', error_code = ${code},
        error_message = ${message}, error_table = ${table ?? null},
        undo_snapshot_id = null, tables_restored = '{}',
        completed_at = clock_timestamp(), heartbeat_at = clock_timestamp()
      where id = ${this.rollbackId}`;
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface RestoreStatus {
  rollback_id: string;
  tenant_id: string;
  snapshot_id: string;
  strategy: Strategy;
  status: "pending" | "running" | "completed" | "failed" | "cancelled";
  current_step: string | null;
  progress_pct: number;
  rows_total: number | null;
  rows_done: number;
  eta_seconds: number | null;
  tables_restored: string[];
  restoration_steps: Step[];
  error: null | { code: string; message: string; table?: string };
  started_at: string | null;
  completed_at: string | null;
  undo_snapshot_id: string | null;
}

export async function getStatus(sql: Sql, rollbackId: string): Promise<RestoreStatus> {
  const [r] = UUID.test(rollbackId)
    ? await sql`select *, extract(epoch from clock_timestamp() - started_at) as elapsed
        from public.backup_pitr_rollback_history where id = ${rollbackId}`
    : [];
  if (!r) throw new NotFound("restore_not_found", `restore ${rollbackId} does not exist`);
  const pct = Number(r.progress_pct);
  const eta = r.status === "running" && pct > 0
    ? Math.round((Number(r.elapsed) * (100 - pct)) / pct)
    : r.status === "completed"
    ? 0
    : null;
  return {
    rollback_id: r.id,
    tenant_id: r.tenant_id,
    snapshot_id: r.snapshot_id,
    strategy: r.strategy,
    status: r.status,
    current_step: r.current_step,
    progress_pct: pct,
    rows_total: r.rows_total === null ? null : Number(r.rows_total),
    rows_done: Number(r.rows_done),
    eta_seconds: eta,
    tables_restored: r.tables_restored,
    restoration_steps: r.restoration_steps,
    error: r.error_code
      ? {
        code: r.error_code,
        message: r.error_message,
        ...(r.error_table ? { table: r.error_table } : {}),
      }
      : null,
    started_at: r.started_at?.toISOString() ?? null,
    completed_at: r.completed_at?.toISOString() ?? null,
    undo_snapshot_id: r.undo_snapshot_id,
  };
}
