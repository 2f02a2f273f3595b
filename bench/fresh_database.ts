// A benchmark's own database: created fresh on the configured server (SUPABASE_DB_URL or
// DATABASE_URL) or on an embedded PostgreSQL started for the run, and dropped at the end whatever
// happened. It must never touch another database than the one it created.
import { configuredDatabaseUrl, connect, type Sql, withDatabase } from "../shared/db/client.ts";
import { startEmbedded } from "../shared/db/embedded.ts";

export interface FreshDatabase {
  /** Where an embedded cluster keeps its files when no database URL is set (under .pitr/). */
  dataDir: string;
  /** The database's name starts with it; a random tag follows. */
  prefix: string;
  log(msg: string): void;
}

/**
 * Runs `run` on a pool of the fresh database; the exit code is 1 when it threw (the error is
 * printed), else 0. The run's own output comes from `run`; the time taken is logged last.
 */
export async function inFreshDatabase(
  db: FreshDatabase,
  run: (sql: Sql) => Promise<void>,
): Promise<number> {
  const started = performance.now();
  const configured = configuredDatabaseUrl();
  const server = configured ? undefined : await startEmbedded(db.dataDir);
  const adminUrl = configured ?? server!.url;
  const admin = connect(adminUrl, { max: 1 });
  const name = `${db.prefix}_${crypto.randomUUID().slice(0, 8)}`;
  await admin`create database ${admin(name)}`;
  const sql = connect(withDatabase(adminUrl, name), { max: 4 });
  let code = 0;
  try {
    await run(sql);
  } catch (e) {
    console.error(e);
    code = 1;
  } finally {
    await sql.end({ timeout: 5 });
    await admin`drop database if exists ${admin(name)} with (force)`;
    await admin.end({ timeout: 5 });
    await server?.stop();
  }
  db.log(`finished in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return code;
}
