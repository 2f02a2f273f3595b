// The lock that serialises everything that writes a tenant's snapshots or rows: a snapshot, a
// restore (with its undo snapshot), a drill. In this process such work waits for its turn in a
// queue per tenant, holding no connection; across processes the database's advisory lock decides.
// It must never be held across requests.
import type { Db, Sql } from "../db/client.ts";
import { Gate, type Release } from "../db/gate.ts";
import { Conflict, PG, sqlState } from "./errors.ts";

function busy(tenantId: string): Conflict {
  return new Conflict(
    "tenant_busy",
    `tenant ${tenantId} is being snapshotted, restored or drilled; try again when it is done`,
  );
}

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
    throw busy(tenantId);
  }
}

/** Waiters for one tenant beyond this many are refused at once (409 tenant_busy). */
const TURN_QUEUE = 64;

/** Per client (so per database), the queue of each tenant that has work queued or running. */
const turns = new WeakMap<Sql, Map<string, Gate>>();

/**
 * The tenant's turn in this process, for transaction()'s `turn`: waits up to `waitMs` without a
 * connection, then 409 tenant_busy. The work then still takes the advisory lock, which decides
 * against other processes (another server, the command line, an Edge Function instance).
 */
export function tenantTurn(sql: Sql, tenantId: string, waitMs: number): () => Promise<Release> {
  return async () => {
    let queues = turns.get(sql);
    if (!queues) turns.set(sql, queues = new Map());
    let gate = queues.get(tenantId);
    if (!gate) {
      gate = new Gate({ slots: 1, queue: TURN_QUEUE, waitMs, refuse: () => busy(tenantId) });
      queues.set(tenantId, gate);
    }
    const release = await gate.acquire({ waitMs });
    return () => {
      release();
      // A tenant nobody waits for leaves no queue behind.
      if (gate.inUse === 0 && gate.queued === 0 && queues.get(tenantId) === gate) {
        queues.delete(tenantId);
      }
    };
  };
}
