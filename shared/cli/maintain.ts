// `deno task maintain`: runs the change log's maintenance job once (what pg_cron runs where it
// exists) against SUPABASE_DB_URL / DATABASE_URL and prints its status. It must never hold a lock
// on the log beyond one step: the procedure commits after each, so it is called outside any
// transaction, by the simple query protocol.
import { configuredDatabaseUrl, connect, type Sql } from "../db/client.ts";

/** Runs the job once and returns the status view's row. */
export async function maintainChangeLog(sql: Sql): Promise<Record<string, unknown>> {
  await sql`call pitr.maintain_change_log()`.simple();
  const [status] = await sql`select * from pitr.log_maintenance_status`;
  return { ...status };
}

if (import.meta.main) {
  const url = configuredDatabaseUrl();
  if (!url) {
    console.error("pitr maintain: set SUPABASE_DB_URL (or DATABASE_URL) to the project's database");
    Deno.exit(2);
  }
  const sql = connect(url, { max: 1, sessions: 0 });
  try {
    const status = await maintainChangeLog(sql);
    for (const [k, v] of Object.entries(status)) {
      console.log(`${k.padEnd(26)} ${v instanceof Date ? v.toISOString() : String(v ?? "")}`);
    }
    if (status.last_outcome !== "ok") Deno.exitCode = 1;
  } catch (e) {
    console.error(`pitr maintain: ${(e as Error).message}`);
    Deno.exitCode = 1;
  } finally {
    await sql.end({ timeout: 1 });
  }
}
