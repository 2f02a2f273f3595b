// `deno task serve`: one local server on HOST:PORT (default 127.0.0.1:54321) with every function at
// /functions/v1/<name>, the paths they have on Supabase. It must never start on a transaction
// pooler, without a key to verify tokens with, or beyond this machine with the development secret.
import { budgetFromEnv, type BudgetSettings } from "../db/budget.ts";
import { configuredDatabaseUrl, connect, type Sql } from "../db/client.ts";
import { createApp } from "../http/app.ts";
import { type AuthConfig, authConfigFromEnv } from "../http/auth.ts";
import { transactionPoolerError, transactionPoolerReason } from "../http/pooler.ts";
import { DEFAULT_HOST, listenHost, urlHost } from "./host.ts";

export const DEFAULT_PORT = 54321;

export function serveApp(
  options: { sql: Sql; auth: AuthConfig; port?: number; hostname?: string },
): Deno.HttpServer<Deno.NetAddr> {
  const app = createApp({ sql: options.sql, auth: options.auth });
  return Deno.serve({
    port: options.port ?? DEFAULT_PORT,
    hostname: options.hostname ?? DEFAULT_HOST,
    onListen: () => {},
  }, app.fetch);
}

function fail(message: string): never {
  console.error(`pitr serve: ${message}`);
  Deno.exit(1);
}

if (import.meta.main) {
  const url = configuredDatabaseUrl();
  if (!url) {
    fail(
      "no database: set SUPABASE_DB_URL or DATABASE_URL (or use `deno task start`, which " +
        "starts an embedded PostgreSQL)",
    );
  }
  const pooler = transactionPoolerReason(url);
  if (pooler) fail(transactionPoolerError(pooler).message);
  const auth = authConfigFromEnv();
  if (!auth.jwtSecret && !auth.jwks && !auth.serviceKeys?.length) {
    fail("no key to verify tokens with: set SUPABASE_JWT_SECRET and/or SUPABASE_URL");
  }
  let hostname: string;
  let budget: BudgetSettings;
  try {
    hostname = listenHost(Deno.env.get("HOST"), auth.jwtSecret);
    budget = budgetFromEnv();
  } catch (e) {
    fail((e as Error).message);
  }
  const port = Number(Deno.env.get("PORT") ?? DEFAULT_PORT);
  // The pool and every dedicated session within PITR_MAX_CONNECTIONS.
  const server = serveApp({ sql: connect(url), auth, port, hostname });
  console.log(
    `pitr listening on http://${urlHost(hostname)}:${server.addr.port}/functions/v1/ ` +
      `(at most ${budget.connections} database connections)`,
  );
}
