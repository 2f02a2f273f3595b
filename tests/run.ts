// `deno task test`: runs every test file against SUPABASE_DB_URL / DATABASE_URL when set, else a
// real PostgreSQL 17 started from npm. It builds one migrated template database per run of the
// migrations, from which each test file clones its own database.
import { configuredDatabaseUrl, connect, withDatabase } from "../shared/db/client.ts";
import {
  DataDirInUse,
  type EmbeddedServer,
  EmbeddedUnavailable,
  startEmbedded,
} from "../shared/db/embedded.ts";
import { migrate, readMigrations } from "../shared/db/migrate.ts";
import { applySupabaseDefaults, SUPABASE_DEFAULTS_SQL } from "../shared/db/supabase_defaults.ts";

const configured = configuredDatabaseUrl();
let server: EmbeddedServer | undefined;
// A cluster this run made for itself, deleted at the end: a second run's while the first holds
// .pitr/test-pg, and every run's when the files must live outside the checkout (nothing is left
// there after the checkout is gone).
let throwaway = false;

async function finish(code: number): Promise<never> {
  await server?.stop();
  if (server && (throwaway || server.relocated)) await server.remove();
  Deno.exit(code);
}
// Ctrl-C reaches the test process too; this one stops its cluster and removes a throwaway one.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => finish(130));
}

try {
  server = configured ? undefined : await startEmbedded(".pitr/test-pg").catch((e) => {
    if (!(e instanceof DataDirInUse)) throw e;
    throwaway = true;
    return startEmbedded(`.pitr/test-pg-${Deno.pid}`);
  });
  const adminUrl = configured ?? server!.url;
  const template = await templateDatabase(adminUrl);
  const command = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", ...(Deno.args.length ? Deno.args : ["tests/"])],
    env: { PITR_TEST_ADMIN_URL: adminUrl, PITR_TEST_TEMPLATE: template },
    stdout: "inherit",
    stderr: "inherit",
  });
  await finish((await command.output()).code);
} catch (e) {
  if (!(e instanceof EmbeddedUnavailable)) console.error(e);
  else console.error(`pitr test: ${e.message}`);
  await finish(1);
}

/** The migrated template database, built once per content of the migrations and the fixture. */
async function templateDatabase(adminUrl: string): Promise<string> {
  const migrations = await readMigrations();
  const fixture = await Deno.readTextFile(new URL("./fixtures/app.sql", import.meta.url));
  const defaults = await Deno.readTextFile(SUPABASE_DEFAULTS_SQL);
  const bytes = new TextEncoder().encode(
    defaults + migrations.map((m) => m.text).join("\n") + fixture,
  );
  const hash = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)))
    .slice(0, 6).map((b) => b.toString(16).padStart(2, "0")).join("");
  const template = `pitr_tpl_${hash}`;

  const admin = connect(adminUrl, { max: 1 });
  const [found] = await admin`select 1 from pg_database where datname = ${template}`;
  if (!found) {
    await admin`create database ${admin(template + "_build")}`.catch(() => {});
    const buildUrl = withDatabase(adminUrl, template + "_build");
    const db = connect(buildUrl, { max: 1 });
    // As on Supabase: the API roles are granted every new object of public before any migration.
    await applySupabaseDefaults(db);
    await migrate(db);
    await db.unsafe(fixture); // the repository's own fixture file
    await db.end();
    await admin`alter database ${admin(template + "_build")} rename to ${admin(template)}`;
  }
  await admin.end();
  return template;
}
