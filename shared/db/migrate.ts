// Applies supabase/migrations/*.sql in order and records each version the way the Supabase CLI
// does, so `supabase db push` later sees them as applied. It must never re-run an applied file.
import type { Sql } from "./client.ts";

export const MIGRATIONS_DIR = new URL("../../supabase/migrations/", import.meta.url);

export interface Migration {
  version: string;
  name: string;
  text: string;
}

export async function readMigrations(dir: URL = MIGRATIONS_DIR): Promise<Migration[]> {
  const found: Migration[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const match = /^(\d{14})_(.+)\.sql$/.exec(entry.name);
    if (!entry.isFile || !match) continue;
    found.push({
      version: match[1],
      name: match[2],
      text: await Deno.readTextFile(new URL(entry.name, dir)),
    });
  }
  return found.sort((a, b) => a.version.localeCompare(b.version));
}

/**
 * Applies pending migrations, each in its own transaction; returns the versions applied. With
 * `upTo`, only versions up to and including it (a test that builds a project's older layout).
 */
export async function migrate(
  sql: Sql,
  options: { dir?: URL; upTo?: string } = {},
): Promise<string[]> {
  await sql`create schema if not exists supabase_migrations`;
  await sql`create table if not exists supabase_migrations.schema_migrations (
    version text primary key, statements text[], name text)`;
  const applied: string[] = [];
  for (const m of await readMigrations(options.dir ?? MIGRATIONS_DIR)) {
    if (options.upTo && m.version > options.upTo) break;
    await sql.begin(async (tx) => {
      // Serialise concurrent runners (two test processes, a deploy racing a start).
      await tx`select pg_advisory_xact_lock(hashtext('pitr:migrate'))`;
      const [done] = await tx`select 1 from supabase_migrations.schema_migrations
        where version = ${m.version}`;
      if (done) return;
      // The one reviewed place that runs raw SQL text: the repository's own migration files.
      await tx.unsafe(m.text);
      await tx`insert into supabase_migrations.schema_migrations (version, statements, name)
        values (${m.version}, ${[m.text]}, ${m.name})`;
      applied.push(m.version);
    });
  }
  return applied;
}
