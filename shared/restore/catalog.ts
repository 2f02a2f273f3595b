// Reads which tables are protected and how they reference each other, from the catalog.
// It must never build SQL from a caller's table name: names are matched against catalog rows.
import type { Db } from "../db/client.ts";
import { BadRequest } from "./errors.ts";

export interface ProtectedTable {
  relid: number;
  schema: string;
  table: string;
  tenantColumn: string;
  /** "schema.table", the name used in answers. */
  name: string;
}

export interface ForeignKey {
  oid: number;
  name: string;
  child: string;
  childColumns: string[];
  parent: string;
  parentColumns: string[];
  deferrable: boolean;
  onDelete: string;
}

export const qualified = (schema: string, table: string) => `${schema}.${table}`;

export async function protectedTables(sql: Db): Promise<ProtectedTable[]> {
  const rows = await sql<
    { relid: number; table_schema: string; table_name: string; tenant_column: string }[]
  >`select relid::int8 as relid, table_schema, table_name, tenant_column
    from pitr.protected_tables order by table_schema, table_name`;
  return rows.map((r) => ({
    relid: Number(r.relid),
    schema: r.table_schema,
    table: r.table_name,
    tenantColumn: r.tenant_column,
    name: qualified(r.table_schema, r.table_name),
  }));
}

/** "table" means public.table; "schema.table" is taken as written (split at the first dot). */
export function normaliseTableName(name: string): string {
  return name.includes(".") ? name : `public.${name}`;
}

/**
 * Picks `requested` out of `available` by name, or all of them when nothing is requested.
 * An unknown name is a 400 whatever characters it holds: it never reaches SQL.
 */
export function pickTables<T extends { name: string }>(
  available: T[],
  requested: string[] | undefined,
  where: string,
): T[] {
  if (!requested) return available;
  const byName = new Map(available.map((t) => [t.name, t]));
  const picked: T[] = [];
  for (const raw of requested) {
    const found = byName.get(normaliseTableName(raw));
    if (!found) {
      throw new BadRequest("unknown_table", `${JSON.stringify(raw)} is not ${where}`);
    }
    if (!picked.includes(found)) picked.push(found);
  }
  return picked;
}

/** Brings backup_fk_constraints_cache up to date with the catalog (a no-op when unchanged). */
export async function refreshForeignKeys(sql: Db): Promise<void> {
  await sql`select pitr.refresh_fk_cache()`;
}

/**
 * The FK graph as cached by refreshForeignKeys, or ("catalog") as the catalog has it at this
 * statement, for a check that must not miss a key added since the cache was read.
 */
export async function foreignKeys(
  sql: Db,
  source: "cache" | "catalog" = "cache",
): Promise<ForeignKey[]> {
  const rows = await sql<
    {
      constraint_oid: number;
      constraint_name: string;
      child_schema: string;
      child_table: string;
      child_columns: string[];
      parent_schema: string;
      parent_table: string;
      parent_columns: string[];
      is_deferrable: boolean;
      on_delete: string;
    }[]
  >`select constraint_oid::int8 as constraint_oid, constraint_name, child_schema, child_table,
      child_columns, parent_schema, parent_table, parent_columns, is_deferrable, on_delete
    from ${sql(source === "catalog" ? "pitr.fk_edges" : "pitr.backup_fk_constraints_cache")}
    order by constraint_oid`;
  return rows.map((r) => ({
    oid: Number(r.constraint_oid),
    name: r.constraint_name,
    child: qualified(r.child_schema, r.child_table),
    childColumns: r.child_columns,
    parent: qualified(r.parent_schema, r.parent_table),
    parentColumns: r.parent_columns,
    deferrable: r.is_deferrable,
    onDelete: r.on_delete,
  }));
}
