// Makes a plain PostgreSQL database look like a new Supabase project before its first migration:
// the API roles, the auth.jwt()/auth.uid() helpers, and Supabase's default grants on schema
// public. Applied to the embedded and test databases only, never to a real project.
import type { Sql } from "./client.ts";
import { MIGRATIONS_DIR } from "./migrate.ts";

export const SUPABASE_DEFAULTS_SQL = new URL("./supabase_defaults.sql", import.meta.url);
/** The roles and auth helpers; a no-op where they exist, so it is also the first migration. */
export const SUPABASE_SHIMS_SQL = new URL("20261128000100_supabase_shims.sql", MIGRATIONS_DIR);

export async function applySupabaseDefaults(sql: Sql): Promise<void> {
  // The repository's own files, each run as a whole like a migration.
  await sql.unsafe(await Deno.readTextFile(SUPABASE_SHIMS_SQL));
  await sql.unsafe(await Deno.readTextFile(SUPABASE_DEFAULTS_SQL));
}
