// True point in time: a tenant's rows as they were at any moment inside the change log's window,
// built in the database from the rows now and the log of what changed since, and stored like a
// snapshot so that plan, execute and verify handle it unchanged. It must never guess: a table
// whose log does not reach back to the moment, or whose columns changed since, is refused.
import type { Db, Sql } from "../db/client.ts";
import { inRolledBackTransaction, transaction } from "../db/transaction.ts";
import { pickTables, protectedTables } from "./catalog.ts";
import { BadRequest, PG, sqlState, Unprocessable } from "./errors.ts";
import { type Plan, type PlanRequest, planRestore } from "./plan.ts";
import { consistentRead, ensureStores, getSnapshot, type Snapshot } from "./snapshot.ts";
import { type Check, validateSnapshot } from "./validate.ts";

export interface PointInTime {
  tenantId: string;
  /** An ISO 8601 timestamp with its zone; kept as text so microseconds survive. */
  at: string;
  tables?: string[];
}

/** The moment, checked against now and against how far back the log is complete. */
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$/;
const isMoment = (at: string) => ISO.test(at) && !Number.isNaN(Date.parse(at));

async function checkMoment(sql: Db, at: string): Promise<void> {
  if (!isMoment(at)) {
    throw new BadRequest("invalid_request", "at must be an ISO 8601 timestamp with a zone");
  }
  const [s] = await sql<
    { future: boolean; early: boolean; complete_since: Date; retention: string }[]
  >`
    select ${at}::text::timestamptz > clock_timestamp() as future,
      ${at}::text::timestamptz < complete_since as early, complete_since, retention::text as retention
    from pitr.settings`;
  if (s.future) throw new BadRequest("invalid_request", `at ${at} is in the future`);
  if (s.early) {
    throw new Unprocessable(
      "outside_retention",
      `the change log is complete only since ${s.complete_since.toISOString()} (retention ${s.retention})`,
    );
  }
}

/**
 * Builds the tenant's state at `at` as a snapshot of kind point_in_time, inside `tx`. With
 * `preview`, its rows are stored under an id of their own instead of the tenant's, so that
 * building it neither needs nor waits for the tenant's lock (the caller rolls it back).
 */
export async function snapshotAtIn(
  tx: Db,
  request: PointInTime,
  options: { preview?: boolean } = {},
): Promise<Snapshot> {
  await checkMoment(tx, request.at);
  const tables = pickTables(await protectedTables(tx), request.tables, "a protected table");
  const [created] = await tx<{ id: string }[]>`
    insert into public.backup_snapshots (tenant_id, label, kind)
    values (${request.tenantId}, ${`as of ${request.at}`}, 'point_in_time')
    returning id`;
  const storeTenant = options.preview ? `preview:${created.id}` : null;
  // A row changed twice by one statement after `at` through a cascading foreign key or a trigger:
  // the log cannot tell the order (pitr.moment_order_unknown). Asked of every table at once, before
  // any is rebuilt.
  const [unknown] = await tx<{ i: number; message: string }[]>`
    select i::int, message from (
      select t.i, pitr.moment_order_unknown(t.relid, ${request.tenantId},
        ${request.at}::text::timestamptz) as message
      from unnest(${tables.map((t) => t.relid)}::oid[]) with ordinality t(relid, i)) x
    where message is not null order by i limit 1`;
  if (unknown) {
    throw new Unprocessable("moment_order_unknown", unknown.message, tables[unknown.i - 1].name);
  }
  for (const [position, t] of tables.entries()) {
    try {
      await tx`select pitr.snapshot_table_at(${created.id}, ${position}, ${t.relid}::oid,
        ${request.at}::text::timestamptz, ${storeTenant})`;
    } catch (e) {
      if (sqlState(e) === PG.PITR_INCOMPATIBLE) {
        throw new Unprocessable("no_change_log", (e as Error).message, t.name);
      }
      // A schema change of the table after `at`: its message names the table and the DDL.
      if (sqlState(e) === PG.PITR_SCHEMA_CHANGED) {
        throw new Unprocessable("schema_incompatible", (e as Error).message, t.name);
      }
      throw e;
    }
  }
  await tx`update public.backup_snapshots s set total_rows = (
      select coalesce(sum(row_count), 0) from pitr.backup_snapshot_tables where snapshot_id = s.id)
    where id = ${created.id}`;
  return await getSnapshot(tx, created.id);
}

/**
 * ensureStores, and the store of each captured table's columns at `at` where columns were added
 * since (pitr.columns_at): a moment is stored with the columns it had. A malformed `at` is left to
 * checkMoment, inside the transaction.
 */
export async function ensureMomentStores(session: Sql, at: string): Promise<void> {
  await ensureStores(session);
  if (!isMoment(at)) return;
  await session`
    select pitr.store_for(c.relid, pitr.columns_at(c.relid, ${at}::text::timestamptz))
    from pitr.capture_tables c join pitr.protected_tables p on p.relid = c.relid
    where c.enabled_at <= ${at}::text::timestamptz
      and pitr.schema_change_after(c.relid, ${at}::text::timestamptz) is null`;
}

/** The state at `at`, kept: execute restores from it like from any snapshot. */
export function snapshotAt(sql: Sql, request: PointInTime): Promise<Snapshot> {
  // One consistent read of the rows now and of the log.
  return transaction(
    sql,
    (tx) => snapshotAtIn(tx, request),
    consistentRead(sql, request.tenantId, (s) => ensureMomentStores(s, request.at)),
  );
}

/**
 * The plan of a restore to `at`. Everything it builds is rolled back: it changes nothing. It
 * takes no tenant lock and touches none of the tenant's stored versions (a preview), so a viewer's
 * plan never makes a snapshot or a restore of the tenant wait or answer tenant_busy.
 */
export async function planAt(
  sql: Sql,
  request: PointInTime & Omit<PlanRequest, "snapshotId" | "tables">,
): Promise<Plan & { at: string }> {
  const plan = await inMoment(
    sql,
    request,
    (tx, snapshot) => planRestore(tx, { ...request, snapshotId: snapshot.snapshot_id }),
  );
  return { ...plan, at: request.at };
}

/** fn's answer on the tenant's state at `at`, built as a preview and rolled back. */
function inMoment<T>(
  sql: Sql,
  request: PointInTime,
  fn: (tx: Sql, snapshot: Snapshot) => Promise<T>,
): Promise<T> {
  return inRolledBackTransaction(
    sql,
    async (tx) => fn(tx, await snapshotAtIn(tx, request, { preview: true })),
    { isolation: "repeatable read", before: (s) => ensureMomentStores(s, request.at) },
  );
}

/**
 * Can the tenant be restored to `at`: is every table's change log long enough, have its columns
 * stayed as they were (a rename aside), and do its rows at `at` meet today's NOT NULL and CHECK
 * constraints and unique keys (a migration that only tightened them is no schema change to the
 * log)? The last is checked on the state built as a plan builds it, then rolled back.
 */
export async function validateAt(
  sql: Sql,
  request: PointInTime,
): Promise<{ valid: boolean; checks: Check[] }> {
  await checkMoment(sql, request.at);
  const tables = pickTables(await protectedTables(sql), request.tables, "a protected table");
  const captured = new Map(
    (await sql<{ relid: string; enabled_at: Date; covers: boolean; blocker: string | null }[]>`
      select relid::int8 as relid, enabled_at, enabled_at <= ${request.at}::text::timestamptz as covers,
        case when enabled_at <= ${request.at}::text::timestamptz
          then coalesce(pitr.schema_change_after(relid, ${request.at}::text::timestamptz),
            pitr.moment_order_unknown(relid, ${request.tenantId},
              ${request.at}::text::timestamptz)) end as blocker
      from pitr.capture_tables where relid = any(${tables.map((t) => t.relid)}::oid[])`)
      .map((r) => [Number(r.relid), r]),
  );
  const checks: Check[] = tables.map((t) => {
    const c = captured.get(t.relid);
    const ok = (c?.covers ?? false) && !c?.blocker;
    return {
      check: "change_log",
      table: t.name,
      ok,
      severity: ok ? "info" : "error",
      message: c === undefined
        ? `capture is not enabled for ${t.name}: select pitr.capture_enable('${t.name}')`
        : !c.covers
        ? `${t.name} is captured only since ${c.enabled_at.toISOString()}, after ${request.at}`
        : c.blocker ?? `${t.name} is captured since ${c.enabled_at.toISOString()}`,
    };
  });
  if (checks.every((c) => c.ok)) {
    checks.push(
      ...await inMoment(
        sql,
        request,
        async (tx, snapshot) =>
          (await validateSnapshot(tx, snapshot.snapshot_id, undefined, { checksums: false })).checks
            .filter((c) => c.check === "constraints" || c.check === "keys"),
      ),
    );
  }
  return { valid: checks.every((c) => c.ok || c.severity !== "error"), checks };
}
