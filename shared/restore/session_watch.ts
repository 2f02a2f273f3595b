// A running restore's own database session, seen from another connection: found by the pid AND
// backend_start recorded when the restore began, to prove it alive (the heartbeat) or to interrupt
// and end it (cancel). It must never signal a backend by pid alone: by the time a cancel acts, the
// pid may belong to another session, which must be left alone. Sessions are kept between
// transactions (shared/db/idle.ts) only after a COMMIT, and a restore's history row leaves running
// in its own commit: a kept session serving other work is never a running restore's.
import type { Sql } from "../db/client.ts";

/**
 * Whether the session recorded for a running restore is still there: null when the restore is not
 * running. A row without backend_start (recorded before it was kept) counts as alive: it cannot
 * be told from another session, so nothing may be concluded from its pid.
 */
export async function restoreSessionAlive(sql: Sql, rollbackId: string): Promise<boolean | null> {
  const [r] = await sql<{ alive: boolean }[]>`
    select h.backend_start is null or exists (
        select from pg_stat_activity a
        where a.pid = h.backend_pid and a.backend_start = h.backend_start) as alive
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
      join pg_stat_activity a on a.pid = h.backend_pid and a.backend_start = h.backend_start
      where h.id = ${rollbackId} and h.status = 'running'`
    : await sql<{ signalled: boolean }[]>`
      select pg_terminate_backend(a.pid) as signalled
      from public.backup_pitr_rollback_history h
      join pg_stat_activity a on a.pid = h.backend_pid and a.backend_start = h.backend_start
      where h.id = ${rollbackId} and h.status = 'running'`;
  return rows.some((r) => r.signalled);
}
