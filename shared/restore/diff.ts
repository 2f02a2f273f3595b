// Row-level review: one page of what a restore would do to each row of one table (insert, update,
// delete), with both images. It must never change anything, nor hold more than a page in memory.
import type { Db, Sql } from "../db/client.ts";
import { transaction } from "../db/transaction.ts";
import { pickTables } from "./catalog.ts";
import { BadRequest, PG, sqlState, Unprocessable } from "./errors.ts";
import { ensureMomentStores, type PointInTime, snapshotAtIn } from "./point_in_time.ts";
import { getSnapshot } from "./snapshot.ts";

export type Change = "insert" | "update" | "delete";

export interface DiffRequest {
  table: string;
  change?: Change;
  /** 1 to 1000; 100 by default. */
  limit?: number;
  /** next_cursor of the previous page. */
  cursor?: string;
}

export interface DiffRow {
  key: unknown;
  change: Change;
  columns: string[];
  snapshot: Record<string, unknown> | null;
  live: Record<string, unknown> | null;
}

export interface DiffPage {
  snapshot_id: string | null;
  tenant_id: string;
  table: string;
  rows: DiffRow[];
  next_cursor: string | null;
}

/** One page of the difference between a snapshot's table and the tenant's rows now. */
export async function diffPage(
  sql: Db,
  request: DiffRequest & { snapshotId: string },
): Promise<DiffPage> {
  const snapshot = await getSnapshot(sql, request.snapshotId);
  const [table] = pickTables(snapshot.tables, [request.table], "a table of this snapshot");
  const limit = request.limit ?? 100;
  const after = decodeCursor(request.cursor);
  let rows: (DiffRow & { sort_key: string[] })[];
  try {
    // One row more than the page tells whether there is a next one.
    rows = await sql<(DiffRow & { sort_key: string[] })[]>`
      select sort_key, key, change, columns, snapshot, live
      from pitr.diff_page(${table.id}, ${request.change ?? null}, ${after}, ${limit + 1})`;
  } catch (e) {
    const state = sqlState(e) ?? "";
    // A cursor whose values do not fit the key's types (it was not one of ours).
    if (state.startsWith("22")) throw new BadRequest("invalid_cursor", "cursor is not valid here");
    if (state === PG.PITR_INCOMPATIBLE || state === PG.PITR_NOT_FOUND) {
      throw new Unprocessable("schema_incompatible", (e as Error).message, table.name);
    }
    throw e;
  }
  const page = rows.slice(0, limit);
  return {
    snapshot_id: snapshot.snapshot_id,
    tenant_id: snapshot.tenant_id,
    table: table.name,
    rows: page.map(({ sort_key: _, ...row }) => row),
    next_cursor: rows.length > limit ? encodeCursor(page[page.length - 1].sort_key) : null,
  };
}

class RollBack extends Error {
  constructor(readonly page: DiffPage) {
    super("diff rolled back");
  }
}

/**
 * The same against the tenant as it was at `at`: the state is built as a preview (no tenant
 * lock, its rows under an id of their own) in a transaction that is always rolled back.
 */
export async function diffPageAt(sql: Sql, request: DiffRequest & PointInTime): Promise<DiffPage> {
  try {
    await transaction(sql, async (tx) => {
      const s = await snapshotAtIn(tx, { ...request, tables: [request.table] }, { preview: true });
      throw new RollBack(await diffPage(tx, { ...request, snapshotId: s.snapshot_id }));
    }, { isolation: "repeatable read", before: (s) => ensureMomentStores(s, request.at) });
  } catch (e) {
    if (e instanceof RollBack) return { ...e.page, snapshot_id: null };
    throw e;
  }
  throw new Error("unreachable: a point-in-time diff committed");
}

function encodeCursor(sortKey: string[]): string {
  const bytes = new TextEncoder().encode(JSON.stringify(sortKey));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_")
    .replaceAll("=", "");
}

function decodeCursor(cursor: string | undefined): string[] | null {
  if (cursor === undefined) return null;
  try {
    const text = atob(cursor.replaceAll("-", "+").replaceAll("_", "/"));
    const value = JSON.parse(
      new TextDecoder().decode(Uint8Array.from(text, (c) => c.charCodeAt(0))),
    );
    if (
      Array.isArray(value) && value.length > 0 &&
      value.every((v) => typeof v === "string" && !v.includes("\u0000"))
    ) return value;
  } catch {
    // Falls through to the 400 below.
  }
  throw new BadRequest("invalid_cursor", "cursor is not one this service gave");
}
