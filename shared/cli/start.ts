// `deno task start`: embedded PostgreSQL (when no database URL is set) + migrations + the local
// server, then prints a service-role token and a curl example. It must never be how production
// runs: the development secret is public, so it never listens beyond this machine with it.
import { SignJWT } from "jose";
import { configuredDatabaseUrl, connect, type Sql } from "../db/client.ts";
import { budgetFromEnv, type BudgetSettings } from "../db/budget.ts";
import { DataDirInUse, EmbeddedUnavailable, startEmbedded } from "../db/embedded.ts";
import { migrate } from "../db/migrate.ts";
import { applySupabaseDefaults } from "../db/supabase_defaults.ts";
import { transactionPoolerError, transactionPoolerReason } from "../http/pooler.ts";
import { authConfigFromEnv } from "../http/auth.ts";
import { DEFAULT_PORT, serveApp } from "./serve.ts";
import { DEV_JWT_SECRET, listenHost, urlHost } from "./host.ts";

export async function mintToken(
  secret: string,
  claims: Record<string, unknown>,
  expiresIn = "30d",
): Promise<string> {
  return await new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setIssuer("pitr-local")
    .setIssuedAt()
    .setExpirationTime(expiresIn)
    .sign(new TextEncoder().encode(secret));
}

/** The demo application, into an embedded database that protects no table yet. */
async function loadDemoOnce(sql: Sql): Promise<boolean> {
  const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from pitr.protected_tables`;
  if (n > 0) return false;
  // The repository's own file, run as a whole like a migration.
  await sql.unsafe(await Deno.readTextFile(new URL("./demo.sql", import.meta.url)));
  return true;
}

/** Ends the start with one line saying why, never a stack trace. */
function fail(message: string): never {
  console.error(`pitr start: ${message}`);
  Deno.exit(1);
}

const configured = configuredDatabaseUrl();
if (configured && transactionPoolerReason(configured)) {
  fail(transactionPoolerError(transactionPoolerReason(configured)!).message);
}
const port = Number(Deno.env.get("PORT") ?? DEFAULT_PORT);
const secret = Deno.env.get("SUPABASE_JWT_SECRET") || DEV_JWT_SECRET;
let hostname: string;
let budget: BudgetSettings;
try {
  // Before anything starts: a refused HOST leaves no embedded database running.
  hostname = listenHost(Deno.env.get("HOST"), secret);
  budget = budgetFromEnv();
} catch (e) {
  fail((e as Error).message);
}
const embedded = configured ? undefined : await startEmbedded(".pitr/pg", 54322).catch((e) => {
  if (e instanceof DataDirInUse) {
    fail(`already running: ${e.message}; stop the other \`deno task start\` (Ctrl-C) first`);
  }
  if (e instanceof EmbeddedUnavailable) fail(e.message);
  fail(`the embedded PostgreSQL did not start: ${(e as Error).message}`);
});
const url = configured ?? embedded!.url;
const sql = connect(url);
// The embedded database is set up as a new Supabase project is, so it exposes what one would.
if (embedded) await applySupabaseDefaults(sql);
const applied = await migrate(sql);
const demo = embedded ? await loadDemoOnce(sql) : false;

const auth = { ...authConfigFromEnv(), jwtSecret: secret };
let server: Deno.HttpServer<Deno.NetAddr>;
try {
  server = serveApp({ sql, auth, port, hostname });
} catch (e) {
  await sql.end({ timeout: 5 });
  await embedded?.stop();
  if (!(e instanceof Deno.errors.AddrInUse)) throw e;
  fail(
    `port ${port} is in use (another \`deno task start\`?): stop it, or set PORT to another port`,
  );
}
const token = await mintToken(secret, { role: "service_role" });
const base = `http://${urlHost(hostname)}:${server.addr.port}/functions/v1`;

console.log(`pitr is running
  database   ${
  embedded
    ? `embedded PostgreSQL 17 at ${url} (files in ${
      embedded.relocated ? embedded.dataDir : ".pitr/pg"
    })`
    : "from SUPABASE_DB_URL / DATABASE_URL"
}
  migrations ${applied.length ? `applied ${applied.join(", ")}` : "up to date"}${
  demo ? "\n  demo data  tenants 101 and 102 (shared/cli/demo.sql)" : ""
}
  functions  ${base}/<name>   (OpenAPI: ${base}/openapi.json)
  budget     at most ${budget.connections} database connections (PITR_MAX_CONNECTIONS)
  jwt secret ${
  secret === DEV_JWT_SECRET
    ? "the public development secret (set SUPABASE_JWT_SECRET to change it)"
    : "SUPABASE_JWT_SECRET"
}

A service-role token, valid 30 days:
  export PITR_TOKEN=${token}

Try:
  curl -s -X POST ${base}/pitr-snapshot -H "Authorization: Bearer $PITR_TOKEN" \\
    -H 'Content-Type: application/json' -d '{"tenant_id": "101", "label": "before import"}'
  curl -s "${base}/pitr-snapshot?tenant_id=101" -H "Authorization: Bearer $PITR_TOKEN"

Ctrl-C stops the server${embedded ? " and the embedded PostgreSQL" : ""}.`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await server.shutdown();
  await sql.end({ timeout: 5 });
  await embedded?.stop();
  Deno.exit(0);
}
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);
