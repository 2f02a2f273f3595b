// Refuses a database URL that points at a transaction pooler. A restore holds one transaction
// with SET LOCAL settings and advisory locks; it must never run where statements of one
// transaction can be spread over server connections or session state is dropped between them.
//
// Supabase's pooler (Supavisor, *.pooler.supabase.com) serves session mode on port 5432 and
// transaction mode on port 6543; PgBouncer setups mark themselves with `pgbouncer=true`. Use the
// direct connection (db.<ref>.supabase.co:5432, which SUPABASE_DB_URL is) or session mode.
import { Unavailable } from "./errors.ts";

export const TRANSACTION_POOLER_PORT = "6543";

/** Why this URL is a transaction pooler, or undefined when it looks like a session connection. */
export function transactionPoolerReason(databaseUrl: string): string | undefined {
  let u: URL;
  try {
    u = new URL(databaseUrl);
  } catch {
    return undefined; // not a URL (a libpq key=value string): nothing to judge it by
  }
  if ((u.searchParams.get("pgbouncer") ?? "").toLowerCase() === "true") {
    return "the database URL has pgbouncer=true";
  }
  if (u.port === TRANSACTION_POOLER_PORT) {
    return `the database URL uses port ${TRANSACTION_POOLER_PORT}, the transaction pooler's`;
  }
  return undefined;
}

export function transactionPoolerError(reason: string): Unavailable {
  return new Unavailable(
    "transaction_pooler",
    `${reason}: a restore needs a direct or session-mode connection (port 5432), ` +
      "because it holds one transaction with locks that a transaction pooler cannot keep",
  );
}

/** Throws 503 transaction_pooler when the URL is a transaction pooler. */
export function assertSessionConnection(databaseUrl: string): void {
  const reason = transactionPoolerReason(databaseUrl);
  if (reason) throw transactionPoolerError(reason);
}
