// Turns any error thrown during a restore into the code, message and table recorded for it.
// It must never put SQL text or row values into the recorded message.
import { isConnectionLost } from "../db/transaction.ts";
import { PG, PitrError, sqlState } from "./errors.ts";

/** A restore whose session ended (terminated, timed out idle in its transaction, a restart). */
const SESSION_LOST = "the restore's database session ended; its transaction was rolled back";

export interface Failure {
  code: string;
  message: string;
  table?: string;
}

export function describeFailure(error: unknown): Failure {
  const table = (error as { table?: string })?.table ??
    (error as { pitrTable?: string })?.pitrTable;
  const where = table ? ` (table ${table})` : "";
  const constraint = (error as { constraint_name?: string })?.constraint_name ?? "";
  if (error instanceof PitrError) return { code: error.code, message: error.message, table };
  if (isConnectionLost(error)) {
    return { code: "connection_lost", message: `${SESSION_LOST}${where}`, table };
  }
  switch (sqlState(error)) {
    case PG.LOCK_NOT_AVAILABLE:
      return {
        code: "lock_timeout",
        message:
          `a row the restore needs stayed locked by another session past lock_timeout${where}`,
        table,
      };
    case PG.QUERY_CANCELED:
      return {
        code: "statement_timeout",
        message: `a statement was cancelled or timed out${where}`,
        table,
      };
    case PG.UNIQUE_VIOLATION:
      return {
        code: "key_conflict",
        message: `a restored row collides with an existing row on unique key ${constraint}${where}`,
        table,
      };
    // An exclusion constraint is a key too: the restored row overlaps a row the restore keeps
    // (another tenant's, or one outside the tables restored).
    case PG.EXCLUSION_VIOLATION:
      return {
        code: "key_conflict",
        message:
          `a restored row conflicts with an existing row on exclusion constraint ${constraint}${where}`,
        table,
      };
    case PG.CHECK_VIOLATION:
      return {
        code: "constraint_violation",
        message: `a restored row violates check constraint ${constraint}${where}`,
        table,
      };
    case PG.NOT_NULL_VIOLATION:
      return {
        code: "schema_incompatible",
        message: `a restored row lacks a NOT NULL value${where}`,
        table,
      };
    case PG.DEADLOCK_DETECTED:
    case PG.SERIALIZATION_FAILURE:
      return {
        code: "concurrent_change",
        message: `a concurrent transaction conflicted with the restore${where}`,
        table,
      };
    case PG.PITR_INCOMPATIBLE:
    case PG.PITR_NOT_FOUND:
      return { code: "schema_incompatible", message: (error as Error).message, table };
  }
  const id = crypto.randomUUID();
  // Log the code and message only: a PostgreSQL error's detail can quote row values.
  console.error(`pitr internal error ${id}:`, sqlState(error) ?? "", (error as Error)?.message);
  return { code: "internal", message: `internal error ${id}${where}`, table };
}
