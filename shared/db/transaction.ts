// A transaction on a session of its own: a one-connection client opened for it and closed after,
// counted in the process's connection budget. It must never write to a connection the server has
// closed. postgres.js's sql.begin() sends ROLLBACK after any error, and a pooled or reserved
// connection terminated under it (pg_terminate_backend, a server restart) is reused in a state
// where the next write throws from a timer under Deno and takes the whole process down. The server
// has already rolled back such a transaction, so nothing is sent on it again.
import { openSession, sessionsOf, type Sql } from "./client.ts";
import type { Release } from "./gate.ts";

const CONNECTION_LOST = new Set(["CONNECTION_CLOSED", "CONNECTION_ENDED", "CONNECTION_DESTROYED"]);

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
      return await inSession(openSession(sql), fn, options);
    } finally {
      release();
    }
  } finally {
    endTurn?.();
  }
}

async function inSession<T>(
  session: Sql,
  fn: (tx: Sql) => Promise<T>,
  options: TransactionOptions,
): Promise<T> {
  const begin = options.isolation === "repeatable read"
    ? "begin isolation level repeatable read"
    : "begin";
  let lost = false;
  try {
    await options.before?.(session);
    // Fixed text chosen from two literals above, never caller input.
    await session.unsafe(begin);
    const result = await fn(session);
    await session`commit`;
    return result;
  } catch (e) {
    lost = isConnectionLost(e);
    if (!lost) await session`rollback`.catch(() => {});
    throw e;
  } finally {
    // The slot is given back only once this resolves: the connection is closed by then (the
    // server has closed its end; postgres.js waits for it), so the next session never overlaps.
    await session.end({ timeout: lost ? 0 : 5 });
  }
}
