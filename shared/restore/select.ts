// Selective restore: the rows a person chose, named by the keys pitr-diff shows, checked for what
// they would break, and completed with their dependencies when asked. It must never let a restore
// write a row that was neither chosen nor added as a dependency (and reported).
import type { Db } from "../db/client.ts";
import { type ForeignKey, pickTables } from "./catalog.ts";
import { BadRequest, PG, sqlState, Unprocessable } from "./errors.ts";
import type { Snapshot, SnapshotTable } from "./snapshot.ts";

/** One table's choice: rows by key (pitr-diff's `key`), or the whole table. */
export interface Choice {
  table: string;
  keys?: unknown[];
  all?: boolean;
}

/** A row added to the choice because a chosen row needed it. */
export interface Added {
  table: string;
  key: unknown;
}

/** How many missing rows an error lists. */
const LISTED = 100;
/** Rounds of adding dependencies before giving up (each round adds what the last one needed). */
const ROUNDS = 50;

/** 422: the choice would break a foreign or unique key; `missing` names the rows it lacks. */
export class SelectionIncomplete extends Unprocessable {
  constructor(message: string, missing: Added[]) {
    super("selection_incomplete", message);
    this.details = { missing: missing.slice(0, LISTED) };
  }
}

/**
 * Inside the restore's (or plan's) transaction: records the choice in temporary tables, checks
 * every key names a row of the difference, and finds what the choice would break. With
 * `withDependencies`, adds those rows and looks again until nothing is missing; without, a
 * missing row is a 422 naming it. Returns the tables restored and the rows added. On return the
 * write and delete sets of every table are materialized for the final choice.
 */
export async function resolveSelection(
  tx: Db,
  snapshot: Snapshot,
  choices: Choice[],
  fks: ForeignKey[],
  withDependencies: boolean,
): Promise<{ tables: SnapshotTable[]; added: Added[] }> {
  const byName = new Map(snapshot.tables.map((t) => [t.name, t]));
  const chosen = new Map<string, SnapshotTable>();
  for (const choice of choices) {
    const [t] = pickTables(snapshot.tables, [choice.table], "a table of this snapshot");
    chosen.set(t.name, t);
    if (!choice.all) await choose(tx, t, choice.keys ?? []);
  }
  const added: Added[] = [];
  const seen = new Set<string>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const t of chosen.values()) {
      await tx`select 1 from pitr.table_diff(${t.id}, 'selective', true)`;
    }
    const unknown: Added[] = [];
    for (const t of chosen.values()) {
      const rows = await tx<{ k: unknown }[]>`select k from pitr.unknown_selected(${t.id}) k`;
      unknown.push(...rows.map((r) => ({ table: t.name, key: r.k })));
    }
    if (unknown.length && round === 0) {
      throw new BadRequest(
        "unknown_key",
        `these keys name no row that the restore would change: ${describe(unknown)}`,
      );
    }
    if (unknown.length) {
      throw new SelectionIncomplete(
        "rows these chosen rows need are unchanged since the snapshot, so choosing them cannot " +
          "help: the restore would break a key",
        unknown,
      );
    }
    const missing = await dependencies(tx, chosen, byName, fks);
    if (missing.length === 0) return { tables: [...chosen.values()], added };
    const fixable = missing.filter((m) => m.fixable && !seen.has(keyOf(m)));
    if (!withDependencies || fixable.length < missing.length) {
      throw new SelectionIncomplete(
        withDependencies
          ? "the choice needs rows that a restore of this tenant cannot bring back (another " +
            "tenant's, or not in the snapshot): it would break a key"
          : "the chosen rows would break a foreign or unique key without the rows in `missing`; " +
            "add them, or ask with_dependencies: true",
        missing.map(({ table, key }) => ({ table, key })),
      );
    }
    const byTable = Map.groupBy(fixable, (m) => m.table);
    for (const [name, rows] of byTable) {
      const t = byName.get(name)!;
      // A table chosen whole already has every row; one not chosen yet joins with these rows.
      if (chosen.has(name) && !(await hasSelection(tx, t))) continue;
      chosen.set(name, t);
      await choose(tx, t, rows.map((r) => r.key));
      for (const r of rows) {
        seen.add(keyOf(r));
        added.push({ table: r.table, key: r.key });
      }
    }
  }
  throw new SelectionIncomplete("the rows this choice needs did not settle", added);
}

async function choose(tx: Db, t: SnapshotTable, keys: unknown[]) {
  try {
    const bad = await tx<{ k: unknown }[]>`
      select k from pitr.select_rows(${t.id}, ${tx.json(keys as never)}) k`;
    if (bad.length) {
      throw new BadRequest(
        "unknown_key",
        `these keys of ${t.name} do not name a row: ${
          describe(bad.map((b) => ({ table: t.name, key: b.k })))
        }`,
      );
    }
  } catch (e) {
    // A key value that does not fit its column's type (text for a number, a bad uuid).
    if ((sqlState(e) ?? "").startsWith("22")) {
      throw new BadRequest("unknown_key", `a key of ${t.name} does not fit its columns' types`);
    }
    if (sqlState(e) === PG.PITR_INCOMPATIBLE) {
      throw new Unprocessable("schema_incompatible", (e as Error).message, t.name);
    }
    throw e;
  }
}

async function hasSelection(tx: Db, t: SnapshotTable): Promise<boolean> {
  const [{ has }] = await tx<{ has: boolean }[]>`
    select to_regclass(${`pg_temp.pitr_select_${t.id}`}) is not null as has`;
  return has;
}

interface Missing extends Added {
  fixable: boolean;
}

/** Every row the choice lacks: through each foreign key between snapshot tables, and unique keys. */
async function dependencies(
  tx: Db,
  chosen: Map<string, SnapshotTable>,
  byName: Map<string, SnapshotTable>,
  fks: ForeignKey[],
): Promise<Missing[]> {
  const out = new Map<string, Missing>();
  const add = (rows: { table_name: string; key: unknown; fixable: boolean }[]) => {
    for (const r of rows) {
      const m = { table: r.table_name, key: r.key, fixable: r.fixable };
      out.set(keyOf(m), m);
    }
  };
  for (const fk of fks) {
    const child = byName.get(fk.child);
    const parent = byName.get(fk.parent);
    if (!child || !parent || (!chosen.has(fk.child) && !chosen.has(fk.parent))) continue;
    add(
      await tx`select table_name, key, fixable
      from pitr.selection_dependencies(${fk.oid}::oid, ${child.id}, ${parent.id})`,
    );
  }
  for (const t of chosen.values()) {
    add(await tx`select table_name, key, fixable from pitr.selection_conflicts(${t.id})`);
  }
  return [...out.values()];
}

function keyOf(a: Added): string {
  return `${a.table}\u0000${JSON.stringify(a.key)}`;
}

function describe(rows: Added[]): string {
  const shown = rows.slice(0, 10).map((r) => `${r.table} ${JSON.stringify(r.key)}`).join(", ");
  return rows.length > 10 ? `${shown} and ${rows.length - 10} more` : shown;
}
