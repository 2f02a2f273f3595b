// `deno task sql "<query>"`: runs one SQL statement against the database `deno task start` uses
// (SUPABASE_DB_URL / DATABASE_URL, else its embedded PostgreSQL on 127.0.0.1:54322) and prints the
// rows as a table, so that a walkthrough needs no psql. It is the user's own SQL, as in psql:
// never for a service path, and it never starts a database.
import { configuredDatabaseUrl, connect } from "../db/client.ts";

/** The embedded database of `deno task start` (shared/cli/start.ts): its fixed port and user. */
const EMBEDDED_URL = "postgres://postgres:postgres@127.0.0.1:54322/postgres";

const text = Deno.args.join(" ").trim();
if (!text) {
  console.error('usage: deno task sql "select …"');
  Deno.exit(2);
}
const sql = connect(configuredDatabaseUrl() ?? EMBEDDED_URL, { max: 1, sessions: 0 });
try {
  // The operator's own statement, as psql would run it.
  const rows = await sql.unsafe(text);
  print(rows.columns?.map((c) => c.name) ?? [], rows as unknown as Record<string, unknown>[]);
} catch (e) {
  const code = (e as { code?: string }).code ?? "";
  console.error(
    code === "ECONNREFUSED"
      ? "pitr sql: no database at 127.0.0.1:54322: start one with `deno task start` (or set SUPABASE_DB_URL)"
      : `pitr sql: ${(e as Error).message}`,
  );
  Deno.exitCode = 1;
} finally {
  await sql.end({ timeout: 1 });
}

function print(columns: string[], rows: Record<string, unknown>[]) {
  if (columns.length === 0) {
    console.log("(done)");
    return;
  }
  const cell = (v: unknown) =>
    v === null || v === undefined
      ? ""
      : v instanceof Date
      ? v.toISOString()
      : typeof v === "object"
      ? JSON.stringify(v)
      : String(v);
  const table = rows.map((r) => columns.map((c) => cell(r[c])));
  const widths = columns.map((c, i) => Math.max(c.length, ...table.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((x, i) => x.padEnd(widths[i])).join(" | ").trimEnd();
  console.log(line(columns));
  console.log(widths.map((w) => "-".repeat(w)).join("-+-"));
  for (const r of table) console.log(line(r));
  console.log(`(${rows.length} row${rows.length === 1 ? "" : "s"})`);
}
