// The baselines: what PostgreSQL itself does with one tenant's rows, COPY TO and COPY FROM a
// server-side binary file. It must never run in the service; it needs a superuser.
import type { Sql } from "../shared/db/client.ts";
import { TABLES } from "./dataset.ts";

/** Server-side files, one per table, named with a random tag so runs never collide. */
export class CopyFiles {
  readonly tag = crypto.randomUUID().slice(0, 8);
  path(table: string): string {
    return `/tmp/pitr_bench_${this.tag}_${table}.bin`;
  }
  get paths(): string[] {
    return TABLES.map((t) => this.path(t));
  }
}

// COPY cannot take its file name as a parameter, so the statements are built here, and only here,
// from the bench's own table names, a bigint tenant id and a path of hex characters: no text
// from outside the bench reaches sql.unsafe.
const quote = (s: string) => `'${s.replaceAll("'", "''")}'`;

/** COPY (SELECT * … WHERE tenant_id = …) TO each table's file; returns the rows written. */
export async function copyOut(sql: Sql, tenant: number, files: CopyFiles): Promise<number> {
  let rows = 0;
  for (const t of TABLES) {
    const r = await sql.unsafe(
      `copy (select * from public.${t} where tenant_id = ${BigInt(tenant)}) ` +
        `to ${quote(files.path(t))} (format binary)`,
    );
    rows += r.count;
  }
  return rows;
}

/**
 * COPY FROM the files into the live tables with triggers (so foreign-key checks) off, in one
 * transaction that commits, like a restore. Returns the rows read.
 */
export async function copyIn(sql: Sql, files: CopyFiles): Promise<number> {
  return await sql.begin(async (tx) => {
    await tx`set local session_replication_role = replica`;
    let rows = 0;
    for (const t of TABLES) {
      const r = await tx.unsafe(`copy public.${t} from ${quote(files.path(t))} (format binary)`);
      rows += r.count;
    }
    return rows;
  });
}

/** Removes the files: through the server (which wrote them, maybe on another host), then here. */
export async function removeFiles(sql: Sql, files: CopyFiles): Promise<void> {
  const list = files.paths.map(quote).join(" ");
  await sql.unsafe(`copy (select 1) to program ${quote(`rm -f ${list}`)}`).catch(() => {});
  for (const p of files.paths) await Deno.remove(p).catch(() => {});
}
