// A transaction on a session of its own (shared/db/session.ts), opened for it or kept from the
// last transaction (shared/db/idle.ts), and closed or kept clean after,
// counted in the process's connection budget.
// It must never write to a connection the server has closed, nor outlive its session: postgres.js's
// sql.begin() sends ROLLBACK after any error, and a pooled or reserved connection terminated under
// it (pg_terminate_backend, a server restart) is reused in a state where the next write throws
// from a timer under Deno and takes the whole process down. The server has already rolled back
// such a transaction, so nothing is sent on it again, and the caller learns at once.
import { idleSessionsOf, sessionsOf, type Sql } from "./client.ts";
import type { Release } from "./gate.ts";
import { openSession, type Session, SESSION_ENDED, SessionEnded } from "./session.ts";

const CONNECTION_LOST = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  SESSION_ENDED,
  // The socket's own errors once the server has closed its end.
  "EPIPE",
  "ECONNRESET",
]);

export function isConnectionLost(error: unknown): boolean {
  const code = (error as { code?: string })?.code ?? "";
  return CONNECTION_LOST.has(code) || code.startsWith("08") || code === "57P01";
}

export interface TransactionOptions {
  isolation?: "read committed" | "repeatable read";
  /**
   * Waits for the work's turn in this process (a tenant's queue, restore/lock.ts) before a
   * session is taken, so that work queued behind other work holds no connection.
   */
  turn?: () => Promise<Release>;
  /** Work already accepted (a recorded restore): it goes ahead of new work waiting for a session. */
  urgent?: boolean;
  /** Runs on the session before BEGIN (a session lock the transaction's snapshot must follow). */
  before?: (session: Sql) => Promise<void>;
  /** Ends the session when aborted (its backend is gone): the transaction fails at once. */
  signal?: AbortSignal;
}

export async function transaction<T>(
  sql: Sql,
  fn: (tx: Sql) => Promise<T>,
  options: TransactionOptions = {},
): Promise<T> {
  const endTurn = await options.turn?.();
  try {
    const release = await sessionsOf(sql).acquire({ urgent: options.urgent });
    try {
      return await inSession(sql, fn, options);
    } finally {
      // Given back only once the session's connection is closed or kept clean (inSession waited
      // for it), so that the next session never overlaps it.
      release();
    }
  } finally {
    endTurn?.();
  }
}

/** A kept session that turned out lost before its transaction began: nothing of it ran. */
class StaleSession extends Error {}

/**
 * On the session the client kept last (idle.ts), else on a new one. A kept session found lost
 * before its transaction began (its backend ended while it was kept: a server restart, an idle
 * timeout, pg_terminate_backend) is replaced by a new one: nothing of the work had run on it, and
 * `before` is idempotent (a setting, a lock, stores created if missing).
 */
async function inSession<T>(
  sql: Sql,
  fn: (tx: Sql) => Promise<T>,
  options: TransactionOptions,
): Promise<T> {
  const kept = idleSessionsOf(sql).take();
  if (kept) {
    try {
      return await onSession(sql, kept, true, fn, options);
    } catch (e) {
      if (!(e instanceof StaleSession)) throw e;
    }
  }
  return await onSession(sql, openSession(sql), false, fn, options);
}

async function onSession<T>(
  sql: Sql,
  session: Session,
  reused: boolean,
  fn: (tx: Sql) => Promise<T>,
  options: TransactionOptions,
): Promise<T> {
  const abort = () => session.abort(String(options.signal?.reason ?? "the session was ended"));
  if (options.signal?.aborted) abort();
  options.signal?.addEventListener("abort", abort);
  // row_security off: a table this session's role would read through row level security (a
  // role without BYPASSRLS, or a table with FORCE ROW LEVEL SECURITY) is an error, not a silently
  // partial snapshot or restore. Superusers and BYPASSRLS roles (Supabase's postgres and
  // service_role) read as before.
  const begin = options.isolation === "repeatable read"
    ? "begin isolation level repeatable read; set local row_security = off"
    : "begin; set local row_security = off";
  // Whatever fn waits on, the transaction is over when its session is: the server rolled it back.
  const whileAlive = <R>(work: Promise<R>): Promise<R> => {
    work.catch(() => {}); // its failure, if any, comes after the session's
    return Promise.race([work, session.ended]);
  };
  let lost = false;
  let begun = false;
  // Only a session whose transaction committed is kept. A failed one is closed, as before sessions
  // were kept: a running restore's session is found by its pid and backend_start while its history
  // row says running (restore/session_watch.ts), which a failed restore's row still says after the
  // rollback, until its failure is recorded; a committed restore's row says completed in the same
  // commit. So a cancel or a heartbeat can never reach other work on a kept session.
  let committed = false;
  try {
    await whileAlive((async () => {
      await options.before?.(session.sql);
      // Fixed text chosen from two literals above, never caller input; two statements, sent as
      // one simple query.
      await session.sql.unsafe(begin);
    })());
    begun = true;
    const result = await whileAlive(fn(session.sql));
    await whileAlive(session.sql`commit`.then(() => {}));
    committed = true;
    return result;
  } catch (e) {
    lost = session.lost() || isConnectionLost(e);
    if (!lost) {
      await whileAlive(session.sql`rollback`.then(() => {})).catch(() => {});
    }
    if (lost && reused && !begun) throw new StaleSession();
    // An error of a lost session (EPIPE, a later query refused) is the session's end.
    throw session.lost() && !isConnectionLost(e)
      ? Object.assign(new SessionEnded("the session's connection closed"), { cause: e })
      : e;
  } finally {
    options.signal?.removeEventListener("abort", abort);
    if (committed && !session.lost() && await session.reset()) {
      await idleSessionsOf(sql).keep(session);
    } else {
      await session.end(lost);
    }
  }
}

/**
 * fn's answer, in a transaction that is rolled back (the plan of a selective restore, one of a
 * point in time): whatever it built is gone.
 */
export async function inRolledBackTransaction<T>(
  sql: Sql,
  fn: (tx: Sql) => Promise<T>,
  options: TransactionOptions = {},
) {
  class RollBack extends Error {
    constructor(readonly value: T) {
      super("rolled back");
    }
  }
  try {
    await transaction(sql, async (tx) => {
      throw new RollBack(await fn(tx));
    }, options);
  } catch (e) {
    if (e instanceof RollBack) return e.value;
    throw e;
  }
  throw new Error("unreachable: a rolled-back transaction committed");
}
