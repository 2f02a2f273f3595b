// Validate: is a snapshot intact (its stored rows match their checksums) and does it still fit
// the live schema? It must never change anything.
import type { Db } from "../db/client.ts";
import { getSnapshot, type Snapshot } from "./snapshot.ts";

export interface Check {
  check: string;
  table?: string;
  ok: boolean;
  severity: "info" | "warning" | "error";
  message: string;
}

export interface Validation {
  snapshot_id: string;
  valid: boolean;
  checks: Check[];
}

export interface ValidateOptions {
  /** false inside a restore, which checks what it wrote against the recorded checksums. */
  checksums?: boolean;
  /**
   * The rows against the table's NOT NULL and CHECK constraints (pitr.validate_rows) and unique
   * keys (pitr.validate_keys, no two rows sharing a value) of today: passes over them, which
   * validate makes and a plan or a restore, refused by the constraints themselves, leaves out.
   */
  rows?: boolean;
}

export async function validateSnapshot(
  sql: Db,
  snapshotId: string,
  only?: Snapshot["tables"],
  { checksums = true, rows: checkRows = true }: ValidateOptions = {},
): Promise<Validation> {
  const snapshot = await getSnapshot(sql, snapshotId);
  const checks: Check[] = [{
    check: "snapshot_exists",
    ok: true,
    severity: "info",
    message: `snapshot of tenant ${snapshot.tenant_id} with ${snapshot.tables.length} tables`,
  }];
  for (const t of only ?? snapshot.tables) {
    const rows = await sql<
      { check_name: string; ok: boolean; severity: Check["severity"]; message: string }[]
    >`
      select check_name, ok, severity, message from pitr.validate_table(${t.id}, ${checksums})`;
    if (!rows.some((r) => r.check_name === "columns")) {
      rows.push({ check_name: "columns", ok: true, severity: "info", message: "columns fit" });
    }
    if (checkRows && !rows.some((r) => !r.ok && r.severity === "error")) {
      rows.push(
        ...await sql<typeof rows>`
          select check_name, ok, severity, message from pitr.validate_rows(${t.id})
          union all
          select check_name, ok, severity, message from pitr.validate_keys(${t.id})`,
      );
    }
    for (const r of rows) {
      checks.push({
        check: r.check_name,
        table: t.name,
        ok: r.ok,
        severity: r.severity,
        message: r.message,
      });
    }
  }
  return {
    snapshot_id: snapshot.snapshot_id,
    valid: checks.every((c) => c.ok || c.severity !== "error"),
    checks,
  };
}

/** The first check that makes the snapshot unrestorable, if any. */
export function firstError(v: Validation): Check | undefined {
  return v.checks.find((c) => !c.ok && c.severity === "error");
}
