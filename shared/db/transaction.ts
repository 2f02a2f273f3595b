// A transaction on a session of its own: a one-connection client opened for it and closed after.
// It must never write to a connection the server has closed. postgres.js's sql.begin() sends
// ROLLBACK after any error, and a pooled or reserved connection terminated under it
// (pg_terminate_backend, a server restart) is reused in a state where the next write throws
// from a timer under Deno and takes the whole process down. The server has already rolled back
// such a transaction, so nothing is sent on it again.
import { connect, type Sql, urlOf } from "./client.ts";

const CONNECTION_LOST = new Set(["CONNECTION_CLOSED", "CONNECTION_ENDED", "CONNECTION_DESTROYED"]);

export function isConnectionLost(error: unknown): boolean {
  const code = (error as { code?: string })?.code ?? "";
  return CONNECTION_LOST.has(code) || code.startsWith("08") || code === "57P01";
}

export interface TransactionOptions {
  isolation?: "read committed" | "repeatable read";
  /** Runs on the session before BEGIN (a session lock the transaction's snapshot must follow). */
  before?: (session: Sql) => Promise<void>;
}

export async function transaction<T>(
  sql: Sql,
  fn: (tx: Sql) => Promise<T>,
  options: TransactionOptions = {},
): Promise<T> {
  const session = connect(urlOf(sql), { max: 1 });
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
    await session.end({ timeout: lost ? 0 : 5 });
  }
}
