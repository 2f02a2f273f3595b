// Applies a snapshot to the live tables inside a transaction the caller holds, and verifies the
// result before the caller commits. It must never take a lock stronger than ROW EXCLUSIVE on a
// shared table, alter a constraint or disable a trigger for other sessions.
import type { Db } from "../db/client.ts";
import { RestoreFailed, Unprocessable } from "./errors.ts";
import {
  cascadeOutsideSet,
  type Plan,
  planRestore,
  referencesOutsideSet,
  type Strategy,
  type Warning,
} from "./plan.ts";
import { foreignKeys, pickTables, protectedTables } from "./catalog.ts";
import { lockTenant } from "./lock.ts";
import { countSnapshotRows, getSnapshot, snapshotIn } from "./snapshot.ts";
import type { Choice } from "./select.ts";

/** Rows written per statement: the unit of progress. */
const BATCH_ROWS = 10_000;

/** The parts of a restore, in order: a restore's onPhase hears each as it begins. */
export type ApplyPhase = "catalog" | "undo" | "diff" | "writes" | "checks";

export interface ApplyOptions {
  strategy: Strategy;
  tables?: string[];
  /** strategy selective: the rows chosen, and whether to add the rows they need. */
  selection?: Choice[];
  withDependencies?: boolean;
  /** A drill: no undo snapshot, since the caller always rolls back. */
  drill?: boolean;
  /**
   * Moves a sequence forward to a value the restore is about to write, on a connection other
   * than the restore's (see pitr.advance_sequence); without it (a drill) sequences are left.
   */
  advanceSequence?(sequence: string, value: number): Promise<void>;
  lockTimeoutMs?: number;
  onPlan?(
    plan: Plan,
    rowsTotal: number,
    fkChecks: FkCheck[],
    undoSnapshotId: string | null,
  ): Promise<void>;
  onStep?(step: { step: string; table?: string; rows?: number }, work: number): Promise<void>;
  /** Awaited as each phase begins, before its first statement (a test's injection point). */
  onPhase?(phase: ApplyPhase): Promise<void>;
}

export interface FkCheck {
  constraint: string;
  child: string;
  parent: string;
  check: "child rows reference a parent" | "deleted parent rows are not referenced";
}

export interface Applied {
  plan: Plan;
  undoSnapshotId: string | null;
  rowsWritten: number;
  tables: string[];
}

/** A restore its plan foresees failing: refused with the plan's blocking warning. */
function refuse(warning: Warning): never {
  throw new Unprocessable("plan_blocked", warning.message, warning.table);
}

export async function applySnapshot(
  tx: Db,
  snapshotId: string,
  options: ApplyOptions,
): Promise<Applied> {
  const step = options.onStep ?? (() => Promise.resolve());
  const phase = options.onPhase ?? (() => Promise.resolve());
  // Triggers stay off for this transaction only: the application's triggers must not rewrite
  // restored rows. FK triggers are off with them, so integrity is checked below before commit.
  await tx`select set_config('session_replication_role', 'replica', true)`;
  await tx`select set_config('lock_timeout', ${`${options.lockTimeoutMs ?? 5000}ms`}, true)`;

  const snapshot = await getSnapshot(tx, snapshotId);
  await lockTenant(tx, snapshot.tenant_id, "xact");

  // The undo snapshot comes first: it writes to the same stores that the plan below points into.
  await phase("catalog");
  const protectedNow = new Set((await protectedTables(tx)).map((t) => t.name));
  await phase("undo");
  // A selective restore may add tables as dependencies: its undo covers every table.
  const undoTables = options.strategy === "selective" ? snapshot.tables : pickTables(
    snapshot.tables,
    options.tables,
    "a table of this snapshot",
  );
  const undoNames = undoTables.map((t) => t.name).filter((n) => protectedNow.has(n));
  // Where it can, the undo of a table is taken without a pass of its own over the tenant's rows:
  // a table the tenant has no row in has an empty undo (pitr.undo_empty), and one overwritten back
  // to the snapshot its head holds takes its undo from the restore's own diff, below
  // (pitr.undo_from_diff). Every other table is snapshotted now, before the plan.
  const empty = new Set<string>();
  const fromDiff = new Set<string>();
  const undone = options.drill ? [] : undoTables.filter((u) => undoNames.includes(u.name));
  // One statement for every table: a round trip each added up in a schema of many tables.
  const flags = undone.length === 0 ? [] : await tx<{ rows: boolean; applies: boolean }[]>`
    select pitr.tenant_has_rows(t.id) as rows, pitr.undo_applies(t.id, ${options.strategy}) as applies
    from unnest(${undone.map((t) => t.id)}::bigint[]) with ordinality t(id, i) order by t.i`;
  undone.forEach((t, i) => {
    if (!flags[i].rows) empty.add(t.name);
    else if (flags[i].applies) fromDiff.add(t.name);
  });
  const undo = options.drill ? null : await snapshotIn(tx, {
    tenantId: snapshot.tenant_id,
    tables: undoNames,
    kind: "undo",
    label: `before restore of snapshot ${snapshotId}`,
  }, { later: new Set([...empty, ...fromDiff]) });
  for (const t of undo ? undoTables.filter((u) => empty.has(u.name)) : []) {
    await tx`select pitr.undo_empty(${undo!.snapshot_id}, ${undoNames.indexOf(t.name)}, ${t.id})`;
  }

  await phase("diff");
  const plan = await planRestore(
    tx,
    {
      snapshotId,
      tables: options.tables,
      strategy: options.strategy,
      selection: options.selection,
      withDependencies: options.withDependencies,
    },
    { forRestore: true },
  );
  const blocker = plan.warnings.find((w) => w.blocking);
  if (blocker) refuse(blocker);
  if (undo && fromDiff.size) {
    for (const t of plan.steps.filter((s) => fromDiff.has(s.name))) {
      await tx`select pitr.undo_from_diff(${undo.snapshot_id}, ${undoNames.indexOf(t.name)},
        ${t.id})`;
    }
  }
  if (undo && (fromDiff.size || empty.size)) await countSnapshotRows(tx, undo.snapshot_id);

  const restored = new Map(plan.steps.map((t) => [t.name, t]));
  const fkChecks: FkCheck[] = [];
  for (const fk of plan.foreignKeys) {
    const base = { constraint: fk.name, child: fk.child, parent: fk.parent };
    if (restored.has(fk.child)) fkChecks.push({ ...base, check: "child rows reference a parent" });
    if (restored.has(fk.parent) && options.strategy !== "merge") {
      fkChecks.push({ ...base, check: "deleted parent rows are not referenced" });
    }
  }

  // The work is the rows written and deleted; rows equal to the snapshot cost nothing.
  const rowsTotal = plan.totals.insert + plan.totals.update + plan.totals.delete;
  const writes = new Map(plan.tables.map((c) => [c.table, c.insert + c.update]));
  // A table the diff found no row to write in (its write set is empty) or none to delete (no row
  // deleted, none updated: an update may re-insert under another key, its old row deleted) needs
  // none of the calls below that read only that set: each would answer nothing, after a round
  // trip and its catalog work (about 10 ms a table). A restore of a few rows in one table of
  // thirty paid them thirty times.
  const wrote = (table: string) => (writes.get(table) ?? 0) > 0;
  const deleted = new Set(
    plan.tables.filter((c) => c.delete + c.update > 0).map((c) => c.table),
  );
  await options.onPlan?.(plan, rowsTotal, fkChecks, undo?.snapshot_id ?? null);

  let written = 0;
  const current = { table: undefined as string | undefined };
  await phase("writes");
  try {
    // Before any write: the sequences first pass every value the restore will write, so the
    // application's next inserts cannot take one of them.
    for (const t of options.advanceSequence ? plan.steps.filter((s) => wrote(s.name)) : []) {
      current.table = t.name;
      const behind = await tx<{ seq: string; max_value: string }[]>`
        select seq, max_value from pitr.sequences_behind(${t.id})`;
      for (const b of behind) await options.advanceSequence!(b.seq, Number(b.max_value));
    }
    // A selective restore's result is checked against its expected digest, taken before it writes.
    for (const t of options.strategy === "selective" ? plan.steps : []) {
      await tx`select pitr.selective_expected(${t.id})`;
    }
    if (options.strategy !== "merge") {
      // Children first, so a parent's rows go after the rows that pointed at them.
      for (const t of [...plan.steps].reverse().filter((s) => deleted.has(s.name))) {
        current.table = t.name;
        const [{ n }] = await tx<{ n: string }[]>`select pitr.restore_delete(${t.id}) as n`;
        written += Number(n);
        await step({ step: "delete", table: t.name, rows: Number(n) }, Number(n));
      }
    }
    for (const t of plan.steps) {
      current.table = t.name;
      const total = writes.get(t.name) ?? 0;
      for (let from = 1; from <= total; from += BATCH_ROWS) {
        const [r] = await tx<{ updated: string; inserted: string }[]>`
          select updated, inserted from pitr.restore_write(${t.id}, ${from}, ${from + BATCH_ROWS})`;
        const rows = Number(r.updated) + Number(r.inserted);
        written += rows;
        await step({ step: "restore", table: t.name, rows }, rows);
      }
    }

    current.table = undefined;
    await step({ step: "verify" }, 0);
    await phase("checks");
    for (const t of plan.steps) {
      current.table = t.name;
      // Only the rows written are hashed (p_undone) when the undo went into the snapshot's own
      // store, whose head then holds the rows as they were before the writes. An undo in another
      // store (the table's columns changed since: added, renamed) leaves that head where it was,
      // and the sum from it was wrong: such restores failed verification_failed.
      const [v] = await tx<
        { ok: boolean; expected_digest: string }[]
      >`select ok, expected_digest from pitr.verify_table(${t.id}, ${options.strategy},
          exists (select from pitr.backup_snapshot_tables u
            join pitr.backup_snapshot_tables x on x.id = ${t.id}
            where u.snapshot_id = ${undo?.snapshot_id ?? null}::uuid
              and u.table_schema = x.table_schema and u.table_name = x.table_name
              and u.store_id = x.store_id and u.store_tenant = x.store_tenant))`;
      // A merge (that the rows it adds are there), a selective restore (the digest of the rows
      // chosen) and an overwrite of columns changed since (the rows as stored now) verify against
      // the store as it is, not against the checksum recorded with the snapshot: their stored rows
      // are checked against it here, so that a row altered behind the service's back is never
      // written whatever the caller checked before.
      if (!v.ok || v.expected_digest !== t.checksum) {
        // Tell a store altered behind the service's back from any other mismatch.
        const [bad] = await tx<{ message: string }[]>`
          select message from pitr.validate_table(${t.id}) where check_name = 'checksum' and not ok`;
        if (bad) throw new Unprocessable("snapshot_invalid", bad.message, t.name);
      }
      if (!v.ok) {
        throw new RestoreFailed(
          "verification_failed",
          `after the restore, the rows of ${t.name} do not match the snapshot's checksum`,
          t.name,
        );
      }
    }
    // Triggers are off for this transaction, those PostgreSQL checks keys with included: the index
    // of a deferrable primary, unique or exclusion key takes a colliding entry and leaves the
    // check to a trigger, so the restore checks those keys itself.
    for (const t of plan.steps.filter((s) => wrote(s.name))) {
      current.table = t.name;
      const [c] = await tx<{ constraint_name: string; rows: string }[]>`
        select constraint_name, rows from pitr.deferred_key_conflicts(${t.id})`;
      if (c) {
        throw new RestoreFailed(
          "key_conflict",
          `${c.rows} restored rows of ${t.name} collide with other rows on deferrable key ` +
            c.constraint_name,
          t.name,
        );
      }
    }
    // FK triggers are off, so these checks are all that enforce the keys. ADD FOREIGN KEY takes
    // SHARE ROW EXCLUSIVE, which a restore's reads do not conflict with: an application's
    // migration may have added a key since the plan read the graph, one the diff did not know
    // (it skips updated rows whose FK columns, as it knew them, kept their values). Such a
    // restore is refused, to be run again; from here to commit no key can be added to a table it
    // wrote or deleted from, since its ROW EXCLUSIVE lock conflicts with that. A key dropped
    // since binds nothing and is not checked. A key across the edge of a partial restore is
    // checked here only, from the rows written and deleted (its plan reads every row of the
    // tenant's table for it), and a violation is refused as the plan would have warned.
    const planned = new Set(plan.foreignKeys.map((fk) => fk.oid));
    const checked = (await foreignKeys(tx, "catalog"))
      .filter((fk) => restored.has(fk.child) || restored.has(fk.parent));
    const added = checked.find((fk) => !planned.has(fk.oid));
    if (added) {
      throw new RestoreFailed(
        "concurrent_change",
        `foreign key ${added.name} (${added.child} to ${added.parent}) was added while the ` +
          "restore ran; nothing was changed, run the restore again",
        restored.has(added.child) ? added.child : added.parent,
      );
    }
    for (const fk of checked) {
      const child = restored.get(fk.child);
      const parent = restored.get(fk.parent);
      // Only the child's written rows can point at a missing parent (pitr.fk_dangling_children),
      // and only the parent's deleted rows can leave a child without one.
      if (child && wrote(fk.child)) {
        current.table = fk.child;
        // The keys the parent's written rows hold are found among its live rows anyway; a parent
        // that wrote none (its diff may have made no write set at all) is not asked.
        const [{ n }] = await tx<{ n: string }[]>`
          select pitr.fk_dangling_children(${fk.oid}::oid, ${child.id},
            ${options.strategy !== "merge" && parent && wrote(fk.parent) ? parent.id : null}) as n`;
        if (Number(n) > 0 && !parent && options.strategy !== "selective") {
          // The plan's count: restored rows whose parent is missing (not a MATCH FULL key
          // written half null, which no table added to the restore would mend).
          const [{ n: missing }] = await tx<{ n: string }[]>`
            select pitr.fk_missing_parents(${fk.oid}::oid, ${child.id}) as n`;
          if (Number(missing) > 0) refuse(referencesOutsideSet(fk, missing));
        }
        if (Number(n) > 0) {
          throw new RestoreFailed(
            "foreign_key_violation",
            `${n} restored rows of ${fk.child} reference missing rows of ${fk.parent} (${fk.name})`,
            fk.child,
          );
        }
      }
      if (parent && options.strategy !== "merge" && deleted.has(fk.parent)) {
        current.table = fk.parent;
        const [{ n }] = await tx<{ n: string }[]>`
          select pitr.fk_orphans_of_deleted(${fk.oid}::oid, ${parent.id}) as n`;
        if (Number(n) > 0 && !child && options.strategy === "overwrite") {
          refuse(cascadeOutsideSet(fk, n, snapshot));
        }
        if (Number(n) > 0) {
          throw new RestoreFailed(
            "foreign_key_violation",
            `${n} rows of ${fk.child} reference rows of ${fk.parent} that the restore deleted (${fk.name})`,
            fk.parent,
          );
        }
      }
    }
  } catch (e) {
    // Name the table the failure happened in, for the history row.
    if (e && typeof e === "object" && !("table" in e && (e as { table?: string }).table)) {
      Object.assign(e, { pitrTable: current.table });
    }
    throw e;
  }
  return {
    plan,
    undoSnapshotId: undo?.snapshot_id ?? null,
    rowsWritten: written,
    tables: plan.order,
  };
}
