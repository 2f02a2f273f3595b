// Plan: the dry run of a restore. The order of tables from the FK graph, and per table how many
// rows would be inserted, updated, deleted and left unchanged. It must never change tenant data.
import type { Db } from "../db/client.ts";
import { type ForeignKey, foreignKeys, pickTables, refreshForeignKeys } from "./catalog.ts";
import { Unprocessable } from "./errors.ts";
import { orderTables } from "./order.ts";
import { getSnapshot, type Snapshot, type SnapshotTable } from "./snapshot.ts";
import { type Added, type Choice, resolveSelection } from "./select.ts";
import { firstError, validateSnapshot } from "./validate.ts";

export type Strategy = "overwrite" | "merge" | "selective";

export interface PlanRequest {
  snapshotId: string;
  tables?: string[];
  strategy?: Strategy;
  /** strategy selective: the rows chosen, instead of `tables`. */
  selection?: Choice[];
  /** strategy selective: add the rows the choice needs instead of refusing it. */
  withDependencies?: boolean;
}

export interface TableCounts {
  table: string;
  insert: number;
  update: number;
  delete: number;
  unchanged: number;
}

export interface Warning {
  code: string;
  table?: string;
  message: string;
  /** Execute refuses a plan with a blocking warning. */
  blocking: boolean;
}

export interface Plan {
  snapshot_id: string;
  tenant_id: string;
  strategy: Strategy;
  order: string[];
  cycles: string[][];
  tables: TableCounts[];
  totals: Omit<TableCounts, "table">;
  warnings: Warning[];
  /** strategy selective: rows added to the choice because chosen rows needed them. */
  dependencies_added: Added[];
  /** Engine detail for execute: the snapshot tables in order, and the FKs that touch them. */
  steps: SnapshotTable[];
  foreignKeys: ForeignKey[];
}

export interface PlanOptions {
  /**
   * Inside a restore's transaction: keep each table's rows to write and to delete in temporary
   * tables for apply, and leave the checksum pass to the verification after the writes.
   */
  forRestore?: boolean;
}

export async function planRestore(
  sql: Db,
  request: PlanRequest,
  options: PlanOptions = {},
): Promise<Plan> {
  const strategy = request.strategy ?? "overwrite";
  const snapshot = await getSnapshot(sql, request.snapshotId);
  // A restore's caller refreshed the cache just before its transaction began (execute, a
  // drill); a key added since is refused by the check after the writes (concurrent_change).
  if (!options.forRestore) await refreshForeignKeys(sql);
  let chosen = pickTables(snapshot.tables, request.tables, "a table of this snapshot");
  let added: Added[] = [];
  if (strategy === "selective") {
    // Needs the caller's transaction: the choice lives in temporary tables.
    ({ tables: chosen, added } = await resolveSelection(
      sql,
      snapshot,
      request.selection ?? [],
      await foreignKeys(sql),
      request.withDependencies ?? false,
    ));
  }

  // Checksums: a restore verifies what it wrote instead; a preview (neither a restore nor
  // selective) recomputes each table's in its diff's pass, compared below; a selective plan,
  // whose diff keeps its write set, checks them here.
  const preview = !options.forRestore && strategy !== "selective";
  const validation = await validateSnapshot(sql, snapshot.snapshot_id, chosen, {
    checksums: !options.forRestore && strategy === "selective",
    rows: false,
  });
  const error = firstError(validation);
  if (error) {
    throw new Unprocessable(
      error.check === "checksum" ? "snapshot_invalid" : "schema_incompatible",
      error.message,
      error.table,
    );
  }
  const warnings: Warning[] = validation.checks
    .filter((c) => !c.ok)
    .map((c) => ({ code: c.check, table: c.table, message: c.message, blocking: false }));

  const names = new Set(chosen.map((t) => t.name));
  const fks = (await foreignKeys(sql)).filter((k) => names.has(k.child) || names.has(k.parent));
  const { order, cycles } = orderTables([...names], fks);
  const byName = new Map(chosen.map((t) => [t.name, t]));
  const steps = order.map((n) => byName.get(n)!);

  const tables: TableCounts[] = [];
  for (const t of steps) {
    const [d] = await sql<
      {
        ins: string;
        upd: string;
        del: string;
        unchanged: string;
        conflicts: string;
        checksum: string | null;
      }[]
    >`
      select ins, upd, del, unchanged, conflicts, checksum
      from pitr.table_diff(${t.id}, ${strategy}, ${!preview})`;
    if (preview && d.checksum !== t.checksum) {
      throw new Unprocessable(
        "snapshot_invalid",
        `the stored rows of ${t.name} do not match their checksum (${t.rows} rows recorded); ` +
          "the snapshot was altered",
        t.name,
      );
    }
    tables.push({
      table: t.name,
      insert: Number(d.ins),
      update: Number(d.upd),
      delete: Number(d.del),
      unchanged: Number(d.unchanged),
    });
    if (Number(d.conflicts) > 0) {
      warnings.push({
        code: "key_conflict",
        table: t.name,
        message:
          `${d.conflicts} snapshot rows of ${t.name} have a key now held by another tenant's row`,
        blocking: true,
      });
    }
    // The other unique and exclusion keys; a restore finds these collisions itself.
    const keys = options.forRestore ? [] : await sql<{ constraint_name: string; rows: string }[]>`
      select constraint_name, rows from pitr.plan_key_conflicts(${t.id}, ${strategy})`;
    for (const k of keys) {
      warnings.push({
        code: "key_conflict",
        table: t.name,
        message: `${k.rows} snapshot rows of ${t.name} collide on key ${k.constraint_name} with ` +
          (strategy === "overwrite" ? "another tenant's rows" : "rows the restore keeps"),
        blocking: true,
      });
    }
  }
  // A selective choice was checked against every key already (resolveSelection).
  if (strategy !== "selective" && !options.forRestore) {
    warnings.push(...await outsideSetWarnings(sql, snapshot, byName, fks, strategy, tables));
  }

  const totals = { insert: 0, update: 0, delete: 0, unchanged: 0 };
  for (const t of tables) {
    totals.insert += t.insert;
    totals.update += t.update;
    totals.delete += t.delete;
    totals.unchanged += t.unchanged;
  }
  return {
    snapshot_id: snapshot.snapshot_id,
    tenant_id: snapshot.tenant_id,
    strategy,
    order,
    cycles,
    tables,
    totals,
    warnings,
    dependencies_added: added,
    steps,
    foreignKeys: fks,
  };
}

/**
 * A restore that covers only some tables must not leave references dangling across the edge of
 * the set: restored rows pointing at parents missing now, or deleted rows that rows of another
 * table still point at (a cascade the restore will not run, since triggers are off). A plan finds
 * them in a pass over the tenant's rows; a restore finds them after its writes, from the rows it
 * wrote and deleted (apply.ts), and refuses with the same warning.
 */
async function outsideSetWarnings(
  sql: Db,
  snapshot: Snapshot,
  restored: Map<string, SnapshotTable>,
  fks: ForeignKey[],
  strategy: Strategy,
  counts: TableCounts[],
): Promise<Warning[]> {
  const warnings: Warning[] = [];
  // Rows deleted, and rows updated (one whose referenced unique key changes takes the key away).
  const removes = new Map(counts.map((c) => [c.table, c.delete + c.update]));
  for (const fk of fks) {
    const child = restored.get(fk.child);
    const parent = restored.get(fk.parent);
    if (child && !parent) {
      const [{ n }] = await sql<{ n: string }[]>`
        select pitr.fk_missing_parents(${fk.oid}::oid, ${child.id}) as n`;
      if (Number(n) > 0) {
        warnings.push(referencesOutsideSet(fk, n));
      }
    }
    if (parent && !child && strategy === "overwrite" && (removes.get(fk.parent) ?? 0) > 0) {
      const [{ n }] = await sql<{ n: string }[]>`
        select pitr.fk_children_of_deleted(${fk.oid}::oid, ${parent.id}) as n`;
      if (Number(n) > 0) warnings.push(cascadeOutsideSet(fk, n, snapshot));
    }
  }
  return warnings;
}

/** Restored rows of fk's child point at rows of its parent, outside the restore, missing now. */
export function referencesOutsideSet(fk: ForeignKey, rows: string): Warning {
  return {
    code: "references_outside_set",
    table: fk.child,
    message: `${rows} restored rows of ${fk.child} reference rows of ${fk.parent} that are ` +
      `missing now (${fk.name}); include ${fk.parent} in the restore`,
    blocking: true,
  };
}

/** Rows of fk's child, outside the restore, point at keys that restoring its parent takes away. */
export function cascadeOutsideSet(fk: ForeignKey, rows: string, snapshot: Snapshot): Warning {
  return {
    code: "cascade_outside_set",
    table: fk.parent,
    message:
      `deleting rows of ${fk.parent} or changing their keys would ${
        fk.onDelete === "cascade" ? "cascade into" : "orphan"
      } ${rows} rows of ${fk.child} (${fk.name}); ` +
      (snapshot.tables.some((t) => t.name === fk.child)
        ? `include ${fk.child} in the restore`
        : `${fk.child} is not in the snapshot`),
    blocking: true,
  };
}
