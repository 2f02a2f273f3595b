// Retention: drops the snapshots the policy in pitr.settings expires (pitr.apply_retention), one
// bounded batch per transaction until none is left. It must never choose what to drop itself.
import type { Sql } from "../db/client.ts";

export interface Expired {
  id: string;
  tenant_id: string;
  kind: string;
  created_at: Date;
  reason: string;
}

/** What the policy expires now, oldest first (nothing is dropped). */
export function expiredSnapshots(sql: Sql): Promise<Expired[]> {
  return sql<Expired[]>`select id, tenant_id, kind, created_at, reason
    from pitr.expired_snapshots()`;
}

/**
 * Runs retention to the end: batches of at most `batch` snapshots (default: the setting), each
 * committed on its own, until a batch drops nothing. Returns how many were dropped in all.
 * A tenant busy with a snapshot, restore or drill is skipped and left for the next run.
 */
export async function applyRetention(sql: Sql, options: { batch?: number } = {}): Promise<number> {
  let total = 0;
  for (;;) {
    const [{ n }] = await sql<{ n: number }[]>`
      select pitr.apply_retention(${options.batch ?? null}::integer) as n`;
    total += n;
    if (n === 0) return total;
  }
}
