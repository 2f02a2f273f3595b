// A running restore's own database session, seen from another connection: found by the pid AND
// backend_start recorded when the restore began, and the transaction it is in, to prove it alive
// (the heartbeat) or to interrupt and end it (cancel). It must never signal a backend by pid alone:
// by the time a cancel acts, the pid may belong to another session, and the session may be serving
// another transaction (sessions are kept between transactions, shared/db/idle.ts); either must be
// left alone.
import type { Sql } from "../db/client.ts";

/**
 * pg_stat_activity `a` is the session of restore `h`, in the restore's transaction (the last one
 * recorded; a row recorded before transactions were recorded, with none, is matched by its
 * session alone). backend_xid is the transaction id's low 32 bits.
 */
const ofRestore = (sql: Sql) =>
  sql`a.pid = h.backend_pid and a.backend_start = h.backend_start
    and (cardinality(h.transaction_ids) = 0
      or a.backend_xid::text
        = (h.transaction_ids[cardinality(h.transaction_ids)]::numeric % 4294967296)::text)`;

/**
 * Whether the session recorded for a running restore is still there: null when the restore is not
 * running. A row without backend_start (recorded before it was kept) counts as alive: it cannot
 * be told from another session, so nothing may be concluded from its pid.
 */
export async function restoreSessionAlive(sql: Sql, rollbackId: string): Promise<boolean | null> {
  const [r] = await sql<{ alive: boolean }[]>`
    select h.backend_start is null or exists (
        select from pg_stat_activity a where ${ofRestore(sql)}) as alive
    from public.backup_pitr_rollback_history h
    where h.id = ${rollbackId} and h.status = 'running'`;
  return r ? r.alive : null;
}

/**
 * Interrupts the restore's current statement (`cancel`) or ends its session (`terminate`, which
 * also ends a session idle in its transaction, which a cancel does not reach). Returns whether
 * the recorded session was found and signalled.
 */
export async function signalRestoreSession(
  sql: Sql,
  rollbackId: string,
  how: "cancel" | "terminate",
): Promise<boolean> {
  const rows = how === "cancel"
    ? await sql<{ signalled: boolean }[]>`
      select pg_cancel_backend(a.pid) as signalled
      from public.backup_pitr_rollback_history h
      join pg_stat_activity a on ${ofRestore(sql)}
      where h.id = ${rollbackId} and h.status = 'running'`
    : await sql<{ signalled: boolean }[]>`
      select pg_terminate_backend(a.pid) as signalled
      from public.backup_pitr_rollback_history h
      join pg_stat_activity a on ${ofRestore(sql)}
      where h.id = ${rollbackId} and h.status = 'running'`;
  return rows.some((r) => r.signalled);
}
