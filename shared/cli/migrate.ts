// `deno task migrate`: applies supabase/migrations to SUPABASE_DB_URL / DATABASE_URL, or to the
// embedded PostgreSQL under .pitr/pg when neither is set. Running it twice is a no-op.
import { configuredDatabaseUrl, connect } from "../db/client.ts";
import { startEmbedded } from "../db/embedded.ts";
import { migrate } from "../db/migrate.ts";

const configured = configuredDatabaseUrl();
const server = configured ? undefined : await startEmbedded(".pitr/pg", 54322);
const sql = connect(configured ?? server!.url, { max: 1 });
try {
  const applied = await migrate(sql);
  console.log(applied.length ? `applied ${applied.join(", ")}` : "database is up to date");
} finally {
  await sql.end();
  await server?.stop();
}
