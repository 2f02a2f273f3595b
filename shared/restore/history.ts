// The restore's history row: created pending, then running with progress, then an outcome.
// Progress is written on the pool, never on the restore's own transaction, whose writes stay
// invisible until commit.
import type { Db, Sql } from "../db/client.ts";
import { Conflict, NotFound, PG, PitrError, sqlState } from "./errors.ts";
import type { Strategy } from "./plan.ts";
import type { Added, Choice } from "./select.ts";
import { restoreSessionAlive, signalRestoreSession } from "./session_watch.ts";

/** How often a running restore proves it is alive, and when silence means it died. */
export function heartbeatMs(): number {
  return Number(Deno.env.get("PITR_HEARTBEAT_MS") ?? 5000);
}
export function staleAfterMs(): number {
  return Number(Deno.env.get("PITR_HEARTBEAT_STALE_MS") ?? 30_000);
}
/** How long a cancel waits for the restore to stop before it ends the restore's session. */
export function cancelEscalateMs(): number {
  return Number(Deno.env.get("PITR_CANCEL_ESCALATE_MS") ?? 3000);
}

/** Records abandoned restores of a tenant (or of all tenants) as failed. */
export async function reapAbandoned(sql: Db, tenantId: string | null): Promise<number> {
  const [{ n }] = await sql<{ n: number }[]>`
    select pitr.reap_abandoned(${tenantId}, ${`${staleAfterMs()} milliseconds`}::interval) as n`;
  return n;
}

export const CANCELLED = "the restore was cancelled and rolled back";

/** Thrown inside a restore when its cancel was requested; the transaction rolls back. */
export class Cancelled extends PitrError {
  constructor() {
    super("cancelled", CANCELLED, 409);
  }
}

export interface RestoreRequest {
  snapshotId: string;
  tenantId: string;
  tables?: string[];
  strategy: Strategy;
  /** strategy selective: the rows chosen, and whether to add the rows they need. */
  selection?: Choice[];
  withDependencies?: boolean;
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
  await reapAbandoned(sql, r.tenantId);
  try {
    const [row] = await sql<{ id: string }[]>`
      insert into public.backup_pitr_rollback_history
        (tenant_id, snapshot_id, strategy, requested_tables, selection, with_dependencies,
          idempotency_key, request_hash, initiated_by)
      values (${r.tenantId}, ${r.snapshotId}, ${r.strategy}, ${r.tables ?? null},
        ${r.selection ? sql.json(r.selection as never) : null}, ${r.withDependencies ?? false},
        ${r.idempotencyKey ?? null}, ${r.requestHash ?? null}, ${r.initiatedBy ?? null})
      returning id`;
    return { id: row.id, reused: false };
  } catch (e) {
    if (sqlState(e) !== PG.UNIQUE_VIOLATION) throw e;
    const constraint = (e as { constraint_name?: string }).constraint_name;
    if (constraint === "backup_pitr_idempotency") return await createRestore(sql, r);
    const [active] = await sql<{ id: string }[]>`
      select id from public.backup_pitr_rollback_history
      where tenant_id = ${r.tenantId} and status in ('pending', 'running')`;
    // It finished between the insert and this read: the tenant is free again.
    if (!active) return await createRestore(sql, r);
    throw new RestoreInProgress(r.tenantId, active.id);
  }
}

/** 409: the tenant's restore that is pending or running, named so that it can be followed. */
export class RestoreInProgress extends Conflict {
  constructor(tenantId: string, readonly rollbackId: string) {
    super(
      "restore_in_progress",
      `a restore of tenant ${tenantId} is already pending or running (${rollbackId})`,
    );
  }
}

export interface RestoreSummary {
  rollback_id: string;
  snapshot_id: string;
  strategy: Strategy;
  status: RestoreStatus["status"];
  started_at: string | null;
  completed_at: string | null;
  rows_total: number | null;
}

/** A tenant's restores, newest first; abandoned runs are recorded as such before they are read. */
export async function listRestores(
  sql: Sql,
  tenantId: string,
  limit: number,
): Promise<RestoreSummary[]> {
  await reapAbandoned(sql, tenantId);
  const rows = await sql<
    {
      id: string;
      snapshot_id: string;
      strategy: Strategy;
      status: RestoreStatus["status"];
      started_at: Date | null;
      completed_at: Date | null;
      rows_total: string | null;
    }[]
  >`select id, snapshot_id, strategy, status, started_at, completed_at, rows_total
    from public.backup_pitr_rollback_history where tenant_id = ${tenantId}
    order by created_at desc, id limit ${limit}`;
  return rows.map((r) => ({
    rollback_id: r.id,
    snapshot_id: r.snapshot_id,
    strategy: r.strategy,
    status: r.status,
    started_at: r.started_at?.toISOString() ?? null,
    completed_at: r.completed_at?.toISOString() ?? null,
    rows_total: r.rows_total === null ? null : Number(r.rows_total),
  }));
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

  /**
   * Moves pending to running and records the restore's session (pid and backend_start); false
   * when the restore is no longer pending (cancelled). backend_start travels as text: a
   * timestamptz parameter would pass through a JavaScript Date and lose its microseconds.
   */
  async start(txid: string, backendPid: number, backendStart: string): Promise<boolean> {
    const rows = await this.sql`update public.backup_pitr_rollback_history
      set status = 'running', started_at = clock_timestamp(), heartbeat_at = clock_timestamp(),
        current_step = 'preparing', backend_pid = ${backendPid},
        backend_start = ${backendStart}::text::timestamptz,
        transaction_ids = transaction_ids || ${txid}::text
      where id = ${this.rollbackId} and status = 'pending' and cancel_requested_at is null
      returning id`;
    return rows.length === 1;
  }

  /**
   * Proves the restore alive: its process (this beat runs) and its session (still in
   * pg_stat_activity with the pid and backend_start it began with). "gone" tells the restore to
   * stop waiting on its session and fail; its outcome is recorded there, by the one who knows
   * whether the transaction ended for another reason first. While the restore's own transaction
   * holds the row (its last write, before commit) the beat skips the write rather than wait.
   */
  async beat(): Promise<"alive" | "gone" | "not running"> {
    const alive = await restoreSessionAlive(this.sql, this.rollbackId);
    if (alive === null) return "not running";
    if (!alive) return "gone";
    await this.sql`with r as (
        select id from public.backup_pitr_rollback_history
        where id = ${this.rollbackId} and status = 'running' for update skip locked)
      update public.backup_pitr_rollback_history h set heartbeat_at = clock_timestamp()
      from r, ${this.progressOnly()} where h.id = r.id`;
    return "alive";
  }

  /**
   * A FROM item that makes the statement's own transaction commit asynchronously: progress and
   * heartbeats are bookkeeping that the restore waits for between its statements, and a crash
   * can lose at most the last few of them, never an outcome (failed and completed are written
   * with a synchronous commit, completed inside the restore's own transaction). Without it each
   * step waited for a WAL flush of its own.
   */
  private progressOnly() {
    return this.sql`(select set_config('synchronous_commit', 'off', true)) progress_only`;
  }

  async planned(
    rowsTotal: number,
    fks: unknown,
    undoSnapshotId: string | null,
    added: Added[] = [],
  ) {
    this.total = Math.max(rowsTotal, 1);
    await this.sql`update public.backup_pitr_rollback_history
      set rows_total = ${rowsTotal}, fk_constraints_handled = ${this.sql.json(fks as never)},
        undo_snapshot_id = ${undoSnapshotId}, dependencies_added = ${this.sql.json(added as never)},
        heartbeat_at = clock_timestamp()
      from ${this.progressOnly()}
      where id = ${this.rollbackId} and status = 'running'`;
  }

  /**
   * Adds rows to the work done and appends a step; progress stays below 100 until the end.
   * Throws Cancelled when a cancel was requested, so the restore stops between statements too,
   * and when the restore is no longer running (its end was recorded already: the heartbeat found
   * its session gone), so a late step never writes over that outcome.
   */
  async advance(step: Omit<Step, "at">, rows: number) {
    this.rowsDone += rows;
    const pct = Math.min(99, Math.floor((this.rowsDone / this.total) * 10000) / 100);
    const entry = { ...step, at: new Date().toISOString() };
    const [r] = await this.sql<{ cancel: boolean }[]>`update public.backup_pitr_rollback_history
      set rows_done = ${this.rowsDone}, progress_pct = ${pct},
        current_step = ${step.table ? `${step.step} ${step.table}` : step.step},
        restoration_steps = restoration_steps || ${this.sql.json([entry])},
        heartbeat_at = clock_timestamp()
      from ${this.progressOnly()}
      where id = ${this.rollbackId} and status = 'running'
      returning cancel_requested_at is not null as cancel`;
    if (!r || r.cancel) throw new Cancelled();
  }

  /** Written inside the restore's transaction, so "completed" commits with the restore itself. */
  async completedIn(tx: Db, tables: string[]) {
    await tx`update public.backup_pitr_rollback_history
      set status = 'completed', progress_pct = 100, rows_done = coalesce(rows_total, rows_done),
        current_step = 'completed', tables_restored = ${tables},
        completed_at = clock_timestamp(), heartbeat_at = clock_timestamp()
      where id = ${this.rollbackId}`;
  }

  async cancelRequested(): Promise<boolean> {
    const [r] = await this.sql<{ cancel: boolean }[]>`
      select cancel_requested_at is not null as cancel from public.backup_pitr_rollback_history
      where id = ${this.rollbackId}`;
    return r?.cancel ?? false;
  }

  async failed(
    status: "failed" | "cancelled",
    code: string,
    message: string,
    table: string | undefined,
  ) {
    await this.sql`update public.backup_pitr_rollback_history
      set status = ${status}, current_step = ${status}, error_code = ${code},
        error_message = ${message}, error_table = ${table ?? null},
        undo_snapshot_id = null, tables_restored = '{}',
        completed_at = clock_timestamp(), heartbeat_at = clock_timestamp()
      where id = ${this.rollbackId} and status in ('pending', 'running')`;
  }
}

/**
 * Cancels a pending or running restore: a pending one is marked cancelled at once; a running
 * one has its current statement interrupted and rolls back, then records cancelled. A running
 * one that has not stopped after cancelEscalateMs (its session idle in its transaction, which a
 * cancel does not reach: its process hung, or died without closing the connection) has its
 * session ended, and is recorded cancelled here once that session is gone. The session is found
 * by pid and backend_start, never by pid alone. Returns the status once the restore has stopped
 * (or after a few seconds more).
 */
export async function cancelRestore(
  sql: Sql,
  rollbackId: string,
  escalateAfterMs = cancelEscalateMs(),
): Promise<RestoreStatus> {
  const current = await getStatus(sql, rollbackId);
  if (current.status !== "pending" && current.status !== "running") return current;
  const [r] = await sql<{ status: string }[]>`
    update public.backup_pitr_rollback_history
    set cancel_requested_at = coalesce(cancel_requested_at, clock_timestamp()),
      status = case when status = 'pending' then 'cancelled' else status end,
      current_step = case when status = 'pending' then 'cancelled' else current_step end,
      error_code = case when status = 'pending' then 'cancelled' else error_code end,
      error_message = case when status = 'pending' then 'the restore was cancelled before it started'
        else error_message end,
      completed_at = case when status = 'pending' then clock_timestamp() else completed_at end
    where id = ${rollbackId}
    returning status`;
  if (r.status !== "running") return await getStatus(sql, rollbackId);
  await signalRestoreSession(sql, rollbackId, "cancel");
  const stopped = await stoppedWithin(sql, rollbackId, escalateAfterMs);
  if (stopped) return stopped;
  await signalRestoreSession(sql, rollbackId, "terminate");
  const until = Date.now() + 2000;
  for (;;) {
    const s = await getStatus(sql, rollbackId);
    if (s.status !== "running") return s;
    if (await restoreSessionAlive(sql, rollbackId) === false) {
      // The server rolled the transaction back with the session; its process may never say so.
      await new Progress(sql, rollbackId).failed("cancelled", "cancelled", CANCELLED, undefined);
      return await getStatus(sql, rollbackId);
    }
    if (Date.now() >= until) return s;
    await sleep(50);
  }
}

/** The status once the restore is no longer running, or undefined after `ms`. */
async function stoppedWithin(sql: Sql, rollbackId: string, ms: number) {
  const until = Date.now() + ms;
  for (;;) {
    const s = await getStatus(sql, rollbackId);
    if (s.status !== "running") return s;
    if (Date.now() >= until) return undefined;
    await sleep(50);
  }
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

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
  /** strategy selective: rows added to the choice because chosen rows needed them. */
  dependencies_added: Added[];
}

/**
 * The tenant a restore belongs to, or undefined when there is no such restore: read alone, with no
 * side effect, so that a caller is authorized before anything else is looked up or done.
 */
export async function restoreTenant(sql: Sql, rollbackId: string): Promise<string | undefined> {
  if (!UUID.test(rollbackId)) return undefined;
  const [r] = await sql<{ tenant_id: string }[]>`
    select tenant_id from public.backup_pitr_rollback_history where id = ${rollbackId}`;
  return r?.tenant_id;
}

export function restoreNotFound(rollbackId: string): NotFound {
  return new NotFound("restore_not_found", `restore ${rollbackId} does not exist`);
}

export async function getStatus(sql: Sql, rollbackId: string): Promise<RestoreStatus> {
  if (UUID.test(rollbackId)) {
    await sql`select pitr.reap_abandoned(tenant_id, ${`${staleAfterMs()} milliseconds`}::interval)
      from public.backup_pitr_rollback_history
      where id = ${rollbackId} and status in ('pending', 'running')`;
  }
  const [r] = UUID.test(rollbackId)
    ? await sql`select *, extract(epoch from clock_timestamp() - started_at) as elapsed
        from public.backup_pitr_rollback_history where id = ${rollbackId}`
    : [];
  if (!r) throw restoreNotFound(rollbackId);
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
    dependencies_added: r.dependencies_added ?? [],
  };
}
