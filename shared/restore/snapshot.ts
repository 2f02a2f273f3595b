// Takes a tenant's snapshot: every protected table (or a chosen few) in one consistent read,
// copied inside the database with checksums. It must never move rows through this process.
import type { Db, Sql } from "../db/client.ts";
import { transaction, type TransactionOptions } from "../db/transaction.ts";
import { lockTenant, tenantTurn } from "./lock.ts";
import { pickTables, protectedTables } from "./catalog.ts";
import { NotFound, Unprocessable } from "./errors.ts";

export interface SnapshotRequest {
  tenantId: string;
  tables?: string[];
  label?: string | null;
  kind?: "manual" | "undo";
  createdBy?: string | null;
  /** Keep a snapshot without rows; without it, takeSnapshot refuses one (422 tenant_empty). */
  allowEmpty?: boolean;
}

export interface SnapshotTable {
  id: number;
  table: string;
  schema: string;
  name: string;
  tenantColumn: string;
  rows: number;
  checksum: string;
  primaryKey: string[];
}

export interface Snapshot {
  snapshot_id: string;
  tenant_id: string;
  label: string | null;
  kind: string;
  created_at: string;
  total_rows: number;
  tables: SnapshotTable[];
}

/** Per client, the snapshot runs still waiting for their turn, by request. */
const waiting = new WeakMap<Sql, Map<string, Promise<Snapshot>>>();

/**
 * Snapshot in its own REPEATABLE READ transaction: one consistent read across tables. Identical
 * requests that wait together share the one snapshot taken when their turn comes: it is taken
 * after each of them arrived, so it is as good as their own. A snapshot with no row at all is
 * most often a mistyped tenant id; it is rolled back unless `allowEmpty`.
 */
export function takeSnapshot(sql: Sql, request: SnapshotRequest): Promise<Snapshot> {
  let queued = waiting.get(sql);
  if (!queued) waiting.set(sql, queued = new Map());
  const key = JSON.stringify([
    request.tenantId,
    request.tables ?? null,
    request.label ?? null,
    request.kind ?? "manual",
    request.createdBy ?? null,
    request.allowEmpty ?? false,
  ]);
  const joined = queued.get(key);
  if (joined) return joined;
  const options = consistentRead(sql, request.tenantId);
  // Called only once the run below has begun waiting, so `run` is set by then.
  const forget = () => {
    if (queued.get(key) === run) queued.delete(key);
  };
  const run = transaction(sql, async (tx) => {
    const s = await snapshotIn(tx, request);
    // What this one read saw, so that a restore compares only the rows written since
    // (pitr.horizon_age).
    await tx`select pitr.record_horizon(${s.snapshot_id})`;
    if (s.total_rows === 0 && !request.allowEmpty) {
      throw new Unprocessable(
        "tenant_empty",
        `tenant ${request.tenantId} has no row in ${
          request.tables ? "the tables given" : "any protected table"
        }: a mistyped tenant_id? Send allow_empty: true to keep an empty snapshot`,
      );
    }
    return s;
  }, {
    ...options,
    // Once its turn has come, the run is under way: later requests wait for the next one.
    turn: () => options.turn!().finally(forget),
  });
  queued.set(key, run);
  run.catch(forget);
  return run;
}

function snapshotLockWaitMs(): number {
  return Number(Deno.env.get("PITR_SNAPSHOT_LOCK_WAIT_MS") ?? 30_000);
}

/**
 * Creates the store of every protected table that has none for its columns yet, each in a
 * transaction of its own before the snapshot's REPEATABLE READ transaction begins: inside it, a
 * store another snapshot created meanwhile would be invisible, and creating it again would fail.
 */
export async function ensureStores(session: Sql) {
  await session`select pitr.store_for(relid) from pitr.protected_tables`;
}

/**
 * transaction() options for work that reads a tenant in one REPEATABLE READ snapshot and writes
 * its snapshots (a snapshot, a point-in-time state): it waits for the tenant's turn in this
 * process without a connection, then for the tenant's advisory lock, against other processes,
 * before the transaction begins (so it sees what the previous holder committed); both within
 * PITR_SNAPSHOT_LOCK_WAIT_MS, then 409 tenant_busy. `stores` makes the stores it will write
 * (ensureStores, or a moment's: ensureMomentStores).
 */
export function consistentRead(
  sql: Sql,
  tenantId: string,
  stores: (session: Sql) => Promise<void> = ensureStores,
): TransactionOptions {
  const waitMs = snapshotLockWaitMs();
  const deadline = Date.now() + waitMs;
  return {
    isolation: "repeatable read",
    turn: tenantTurn(sql, tenantId, waitMs),
    before: async (session) => {
      // At least 1 ms: a lock_timeout of 0 would wait forever.
      const timeout = `${Math.max(1, deadline - Date.now())}ms`;
      await session`select set_config('lock_timeout', ${timeout}, false)`;
      await lockTenant(session, tenantId, "session");
      await stores(session);
    },
  };
}

/** Snapshot inside a transaction the caller holds (the restore's undo snapshot). */
export async function snapshotIn(
  tx: Db,
  request: SnapshotRequest,
  options: { later?: Set<string> } = {},
): Promise<Snapshot> {
  const tables = pickTables(await protectedTables(tx), request.tables, "a protected table");
  const [created] = await tx<{ id: string }[]>`
    insert into public.backup_snapshots (tenant_id, label, kind, created_by)
    values (${request.tenantId}, ${request.label ?? null}, ${request.kind ?? "manual"},
      ${request.createdBy ?? null})
    returning id`;
  for (const [position, t] of tables.entries()) {
    // Left to the caller, at this position (a restore's undo taken from its own diff).
    if (options.later?.has(t.name)) continue;
    await tx`select pitr.snapshot_table(${created.id}, ${position}, ${t.relid}::oid)`;
  }
  await countSnapshotRows(tx, created.id);
  return await getSnapshot(tx, created.id);
}

/** Records a snapshot's total rows from its tables. */
export async function countSnapshotRows(tx: Db, snapshotId: string): Promise<void> {
  await tx`update public.backup_snapshots s set total_rows = (
      select coalesce(sum(row_count), 0) from pitr.backup_snapshot_tables
      where snapshot_id = s.id)
    where id = ${snapshotId}`;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The tenant a snapshot belongs to, or undefined when there is none: read alone, to authorize. */
export async function snapshotTenant(sql: Db, snapshotId: string): Promise<string | undefined> {
  if (!UUID.test(snapshotId)) return undefined;
  const [s] = await sql<{ tenant_id: string }[]>`
    select tenant_id from public.backup_snapshots where id = ${snapshotId}`;
  return s?.tenant_id;
}

export function snapshotNotFound(snapshotId: string): NotFound {
  return new NotFound("snapshot_not_found", `snapshot ${snapshotId} does not exist`);
}

export async function getSnapshot(sql: Db, snapshotId: string): Promise<Snapshot> {
  const [s] = UUID.test(snapshotId)
    ? await sql<
      {
        id: string;
        tenant_id: string;
        label: string | null;
        kind: string;
        created_at: Date;
        total_rows: string;
      }[]
    >`select id, tenant_id, label, kind, created_at, total_rows
      from public.backup_snapshots where id = ${snapshotId}`
    : [];
  if (!s) throw snapshotNotFound(snapshotId);
  const tables = await sql<
    {
      id: string;
      table_schema: string;
      table_name: string;
      tenant_column: string;
      row_count: string;
      checksum: string;
      primary_key: string[];
    }[]
  >`select id, table_schema, table_name, tenant_column, row_count, checksum, primary_key
    from pitr.backup_snapshot_tables where snapshot_id = ${snapshotId} order by position`;
  return {
    snapshot_id: s.id,
    tenant_id: s.tenant_id,
    label: s.label,
    kind: s.kind,
    created_at: s.created_at.toISOString(),
    total_rows: Number(s.total_rows),
    tables: tables.map((t) => ({
      id: Number(t.id),
      schema: t.table_schema,
      table: t.table_name,
      name: `${t.table_schema}.${t.table_name}`,
      tenantColumn: t.tenant_column,
      rows: Number(t.row_count),
      checksum: t.checksum,
      primaryKey: t.primary_key,
    })),
  };
}

export async function listSnapshots(sql: Db, tenantId: string) {
  const rows = await sql<
    { id: string; label: string | null; kind: string; created_at: Date; total_rows: string }[]
  >`select id, label, kind, created_at, total_rows from public.backup_snapshots
    where tenant_id = ${tenantId} order by created_at desc, id`;
  return rows.map((r) => ({
    snapshot_id: r.id,
    label: r.label,
    kind: r.kind,
    created_at: r.created_at.toISOString(),
    total_rows: Number(r.total_rows),
  }));
}
