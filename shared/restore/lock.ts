// The advisory lock that serialises everything that writes a tenant's snapshots or rows: a
// snapshot, a restore (with its undo snapshot), a drill. It must never be held across requests.
import type { Db } from "../db/client.ts";
import { Conflict, PG, sqlState } from "./errors.ts";

/**
 * Waits for the tenant's lock (up to the session's lock_timeout): "xact" until the transaction
 * ends, "session" until unlockTenant or the session closes (taken before a REPEATABLE READ
 * transaction begins, so its snapshot sees what the previous holder committed).
 */
export async function lockTenant(sql: Db, tenantId: string, scope: "xact" | "session") {
  try {
    if (scope === "xact") {
      await sql`select pg_advisory_xact_lock(hashtext('pitr:tenant'), hashtext(${tenantId}))`;
    } else {
      await sql`select pg_advisory_lock(hashtext('pitr:tenant'), hashtext(${tenantId}))`;
    }
  } catch (e) {
    if (sqlState(e) !== PG.LOCK_NOT_AVAILABLE) throw e;
    throw new Conflict(
      "tenant_busy",
      `tenant ${tenantId} is being snapshotted, restored or drilled; try again when it is done`,
    );
  }
}
