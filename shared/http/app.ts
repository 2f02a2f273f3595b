// The hono app: every function at /functions/v1/<name> (and at /<name>, the path a function sees
// on Supabase). Handlers only parse, authorize and call the engine; they must never build SQL.
import { type Context, Hono } from "hono";
import { cors } from "hono/cors";
import { budgetFromEnv } from "../db/budget.ts";
import { configuredDatabaseUrl, connect, sessionsOf, type Sql } from "../db/client.ts";
import { inRolledBackTransaction, transaction } from "../db/transaction.ts";
import { diffPage, diffPageAt } from "../restore/diff.ts";
import { drillFleet, drillReport, runDrills } from "../restore/drill.ts";
import { Unprocessable } from "../restore/errors.ts";
import { executeRestore } from "../restore/execute.ts";
import {
  cancelRestore,
  createRestore,
  getStatus,
  listRestores,
  restoreNotFound,
  type RestoreStatus,
  restoreTenant,
} from "../restore/history.ts";
import { normaliseTableName, pickTables } from "../restore/catalog.ts";
import { type PlanRequest, planRestore } from "../restore/plan.ts";
import { planAt, snapshotAt, validateAt } from "../restore/point_in_time.ts";
import {
  getSnapshot,
  listSnapshots,
  type Snapshot,
  snapshotNotFound,
  snapshotTenant,
  takeSnapshot,
} from "../restore/snapshot.ts";
import { firstError, validateSnapshot } from "../restore/validate.ts";
import {
  type AuthConfig,
  authConfigFromEnv,
  authenticate,
  mayActOn,
  ownTenant,
  type Principal,
  requireAction,
  requireTenant,
} from "./auth.ts";
import {
  CancelBody,
  CancelQuery,
  DiffBody,
  DrillBody,
  DrillQuery,
  ExecuteBody,
  ExecuteHeaders,
  ExecuteQuery,
  parse,
  PlanBody,
  queryOf,
  readJson,
  SnapshotCreate,
  SnapshotList,
  type Source,
  StatusQuery,
  ValidateBody,
} from "./contracts.ts";
import { Forbidden, MethodNotAllowed, onError, Unavailable } from "./errors.ts";
import { transactionPoolerError, transactionPoolerReason } from "./pooler.ts";
import openapi from "./openapi.json" with { type: "json" };

export const FUNCTIONS = [
  "pitr-snapshot",
  "pitr-validate",
  "pitr-plan",
  "pitr-execute",
  "pitr-status",
  "pitr-drill",
  "pitr-diff",
] as const;

/** The methods each path takes; any other is 405 with `Allow` (CORS preflights aside). */
const METHODS: Record<string, string[]> = {
  "/openapi.json": ["GET"],
  "/pitr-snapshot": ["GET", "POST"],
  "/pitr-validate": ["POST"],
  "/pitr-plan": ["POST"],
  "/pitr-execute": ["POST", "DELETE"],
  "/pitr-execute/cancel": ["POST"],
  "/pitr-status": ["GET"],
  "/pitr-drill": ["GET", "POST"],
  "/pitr-diff": ["POST"],
};

export interface AppDeps {
  sql: Sql;
  auth: AuthConfig;
  /** Keeps a restore running after the 202 answer; in-process by default. */
  runInBackground?: (work: Promise<unknown>) => void;
  /** Where the one line per request goes; stdout by default. */
  log?: (line: string) => void;
}

type Env = { Variables: { principal: Principal } };

/** The ids a request's log line names: only ids read back from the database, never input. */
type Ids = { rollback_id?: string; snapshot_id?: string };
const noted = new WeakMap<Request, Ids>();

function note(c: Context, ids: Ids) {
  noted.set(c.req.raw, { ...noted.get(c.req.raw), ...ids });
}

export function createApp(deps: AppDeps): Hono {
  const { sql } = deps;
  const background = deps.runInBackground ?? inProcess;
  const api = new Hono<Env>();

  api.use(
    "*",
    cors({
      origin: "*",
      allowHeaders: ["authorization", "x-client-info", "apikey", "content-type", "idempotency-key"],
      allowMethods: ["GET", "POST", "DELETE", "OPTIONS"],
    }),
  );
  for (const [path, methods] of Object.entries(METHODS)) {
    // Before authentication: which methods a path takes is public (the OpenAPI document).
    api.use(path, async (c, next) => {
      const m = c.req.method;
      if (m !== "OPTIONS" && !methods.includes(m) && !(m === "HEAD" && methods.includes("GET"))) {
        throw new MethodNotAllowed(path.slice(1), m.slice(0, 20), methods);
      }
      await next();
    });
  }
  api.get("/openapi.json", (c) => c.json(openapi));
  for (const path of [...FUNCTIONS.map((name) => `/${name}`), "/pitr-execute/cancel"]) {
    api.use(path, async (c, next) => {
      c.set("principal", await authenticate(deps.auth, c.req.header("authorization")));
      await next();
    });
  }

  api.post("/pitr-snapshot", async (c) => {
    const body = parse(SnapshotCreate, await readJson(c.req.raw));
    authorize(c.var.principal, "write", body.tenant_id);
    const s = await takeSnapshot(sql, {
      tenantId: body.tenant_id,
      tables: body.tables,
      label: body.label,
      createdBy: c.var.principal.sub ?? c.var.principal.role,
      allowEmpty: body.allow_empty,
    });
    note(c, { snapshot_id: s.snapshot_id });
    return c.json(snapshotAnswer(s), 201);
  });

  api.get("/pitr-snapshot", async (c) => {
    const q = parse(SnapshotList, queryOf(c.req.url));
    authorize(c.var.principal, "read", q.tenant_id);
    return c.json({ snapshots: await listSnapshots(sql, q.tenant_id) });
  });

  api.post("/pitr-validate", async (c) => {
    const body = parse(ValidateBody, await readJson(c.req.raw));
    if (body.at !== undefined) {
      authorize(c.var.principal, "read", body.tenant_id);
      const v = await validateAt(sql, {
        tenantId: body.tenant_id,
        at: body.at,
        tables: body.tables,
      });
      return c.json({ snapshot_id: null, tenant_id: body.tenant_id, at: body.at, ...v });
    }
    const s = await snapshotFor(c, "read", body.snapshot_id);
    const only = body.tables && pickTables(s.tables, body.tables, "a table of this snapshot");
    return c.json(await longRead(sql, (session) => validateSnapshot(session, s.snapshot_id, only)));
  });

  api.post("/pitr-plan", async (c) => {
    const body = parse(PlanBody, await readJson(c.req.raw));
    const request = {
      tables: body.tables,
      strategy: body.strategy,
      selection: body.select,
      withDependencies: body.with_dependencies,
    };
    if (body.at !== undefined) {
      authorize(c.var.principal, "read", body.tenant_id);
      // The plan is made against a state built and rolled back inside planAt: no snapshot is kept.
      const { steps: _s, foreignKeys: _f, ...plan } = await planAt(sql, {
        ...request,
        tenantId: body.tenant_id,
        at: body.at,
      });
      return c.json({ ...plan, snapshot_id: null });
    }
    await snapshotFor(c, "read", body.snapshot_id);
    const { steps: _s, foreignKeys: _f, ...plan } = await planInTransaction(sql, {
      ...request,
      snapshotId: body.snapshot_id,
    });
    return c.json(plan);
  });

  api.post("/pitr-diff", async (c) => {
    const body = parse(DiffBody, await readJson(c.req.raw));
    const page = { table: body.table, change: body.change, limit: body.limit, cursor: body.cursor };
    if (body.at !== undefined) {
      authorize(c.var.principal, "read", body.tenant_id);
      return c.json(await diffPageAt(sql, { ...page, tenantId: body.tenant_id, at: body.at }));
    }
    await snapshotFor(c, "read", body.snapshot_id);
    return c.json(await diffPage(sql, { ...page, snapshotId: body.snapshot_id }));
  });

  api.post("/pitr-execute", async (c) => {
    const body = parse(ExecuteBody, await readJson(c.req.raw));
    const wait = parse(ExecuteQuery, queryOf(c.req.url)).wait === "true";
    const key = parse(ExecuteHeaders, {
      "idempotency-key": c.req.header("idempotency-key") || undefined,
    })["idempotency-key"];
    let s: Snapshot;
    if (body.at !== undefined) {
      authorize(c.var.principal, "write", body.tenant_id);
      // The state at `at`, kept as a snapshot of kind point_in_time; from here on the restore
      // is a snapshot restore like any other.
      s = await snapshotAt(sql, { tenantId: body.tenant_id, at: body.at, tables: body.tables });
      note(c, { snapshot_id: s.snapshot_id });
    } else {
      s = await snapshotFor(c, "write", body.snapshot_id);
    }
    // A restore once recorded must not wait long for a session: refuse now if none could be had.
    sessionsOf(sql).assertRoom();
    const { id, reused } = await startRestore(
      sql,
      c.var.principal,
      s,
      body,
      key,
    );
    note(c, { rollback_id: id });
    const run = reused ? Promise.resolve() : executeRestore(sql, id).then(() => {});
    if (wait) {
      await run;
      return c.json(await settled(sql, id), 200);
    }
    background(run);
    const { status } = await getStatus(sql, id);
    return c.json({ rollback_id: id, status }, 202);
  });

  // Cancel: a pending restore is cancelled at once, a running one is interrupted and rolls back.
  api.post("/pitr-execute/cancel", async (c) => {
    const body = parse(CancelBody, await readJson(c.req.raw));
    return c.json(await cancel(c, body.rollback_id));
  });

  api.delete("/pitr-execute", async (c) => {
    const q = parse(CancelQuery, queryOf(c.req.url));
    return c.json(await cancel(c, q.rollback_id));
  });

  api.get("/pitr-status", async (c) => {
    const q = parse(StatusQuery, queryOf(c.req.url));
    if (q.tenant_id !== undefined) {
      authorize(c.var.principal, "read", q.tenant_id);
      return c.json({ restores: await listRestores(sql, q.tenant_id, q.limit ?? 20) });
    }
    await restoreFor(c.var.principal, "read", q.rollback_id!);
    note(c, { rollback_id: q.rollback_id! });
    return c.json(await getStatus(sql, q.rollback_id!));
  });

  api.post("/pitr-drill", async (c) => {
    const body = parse(DrillBody, await readJson(c.req.raw));
    const p = c.var.principal;
    // Every tenant is the service role's to drill; a tenant's admin drills its own.
    const tenant = body.tenant_id ?? ownTenant(p);
    requireAction(p, "write");
    if (tenant !== undefined) requireTenant(p, tenant);
    else if (p.role !== "service_role") {
      throw new Forbidden("forbidden_tenant", "only the service role drills every tenant");
    }
    if (tenant !== undefined) return c.json({ drills: await runDrills(sql, tenant) });
    const budgetMs = body.budget_s === undefined ? undefined : Math.round(body.budget_s * 1000);
    return c.json(await drillFleet(sql, { budgetMs }));
  });

  // The drill report: the service role reads every tenant's, an admin its own tenant's.
  api.get("/pitr-drill", async (c) => {
    const q = parse(DrillQuery, queryOf(c.req.url));
    const p = c.var.principal;
    const tenant = q.tenant_id ?? ownTenant(p);
    requireAction(p, "write");
    if (tenant !== undefined) requireTenant(p, tenant);
    else if (p.role !== "service_role") {
      throw new Forbidden("forbidden_tenant", "only the service role reads every tenant's drills");
    }
    return c.json(await drillReport(sql, { tenantId: tenant, limit: q.limit }));
  });

  const app = new Hono();
  const log = deps.log ?? console.log;
  app.use("*", async (c, next) => {
    const started = performance.now();
    await next();
    log(requestLine(c, performance.now() - started));
  });
  app.onError(onError);
  app.notFound((c) =>
    c.json({ error: { code: "not_found", message: `no function at ${c.req.path}` } }, 404)
  );
  app.route("/functions/v1", api);
  app.route("/", api);

  // Authorize before any lookup: the role first, then only the id's tenant is read. An id of a
  // tenant the caller may not act on is answered exactly as an id that does not exist, so that a
  // token without rights cannot learn which ids exist.
  async function snapshotFor(c: Context<Env>, action: "read" | "write", snapshotId: string) {
    requireAction(c.var.principal, action);
    const tenant = await snapshotTenant(sql, snapshotId);
    if (tenant === undefined || !mayActOn(c.var.principal, tenant)) {
      throw snapshotNotFound(snapshotId);
    }
    const s = await getSnapshot(sql, snapshotId);
    note(c, { snapshot_id: s.snapshot_id });
    return s;
  }

  async function restoreFor(p: Principal, action: "read" | "write", rollbackId: string) {
    requireAction(p, action);
    const tenant = await restoreTenant(sql, rollbackId);
    if (tenant === undefined || !mayActOn(p, tenant)) throw restoreNotFound(rollbackId);
  }

  async function cancel(c: Context<Env>, rollbackId: string) {
    await restoreFor(c.var.principal, "write", rollbackId);
    note(c, { rollback_id: rollbackId });
    return await cancelRestore(sql, rollbackId);
  }
  return app;
}

/**
 * `POST /functions/v1/pitr-execute 202 12ms rollback_id=…`: method, path (never the query), status,
 * milliseconds and the ids the handler noted; never a header, a token, a body or a row.
 */
function requestLine(c: Context, ms: number): string {
  const ids = Object.entries(noted.get(c.req.raw) ?? {}).map(([k, v]) => ` ${k}=${v}`).join("");
  const path = new URL(c.req.url).pathname.slice(0, 200);
  return `${c.req.method} ${path} ${c.res.status} ${Math.round(ms)}ms${ids}`;
}

/**
 * A plan or a validation reads a tenant's rows for as long as they take: on a session of the
 * budget's (in a transaction of its own), so that the pool stays free for the short queries
 * (status, lists, a running restore's progress) that would otherwise queue behind it.
 */
function longRead<T>(sql: Sql, fn: (session: Sql) => Promise<T>): Promise<T> {
  return transaction(sql, fn);
}

function authorize(p: Principal, action: "read" | "write", tenantId: string) {
  requireAction(p, action);
  requireTenant(p, tenantId);
}

function snapshotAnswer(s: Snapshot) {
  return {
    snapshot_id: s.snapshot_id,
    tenant_id: s.tenant_id,
    label: s.label,
    created_at: s.created_at,
    total_rows: s.total_rows,
    tables: s.tables.map((t) => ({ table: t.name, rows: t.rows, checksum: t.checksum })),
  };
}

/**
 * Checks what can be checked before a restore is recorded (tables of the snapshot: 400; a snapshot
 * that no longer fits the live schema: 422), then records it; the database decides the 409. Stored
 * rows that no longer match their checksums are the restore's to find, in what it writes, before
 * commit (snapshot_invalid): checking all of them here was a pass over every stored row of the
 * tenant before every restore, whatever it changed (165 ms of a 111,000-row tenant on PostgreSQL
 * 15, beside 280 ms for the whole restore of a 5% drift).
 */
async function startRestore(
  sql: Sql,
  p: Principal,
  s: Snapshot,
  body: ExecuteBody,
  idempotencyKey: string | undefined,
) {
  const chosen = pickTables(s.tables, body.tables, "a table of this snapshot");
  const error = firstError(
    await longRead(
      sql,
      (session) =>
        validateSnapshot(session, s.snapshot_id, chosen, { checksums: false, rows: false }),
    ),
  );
  if (error) {
    throw new Unprocessable(
      error.check === "checksum" ? "snapshot_invalid" : "schema_incompatible",
      error.message,
      error.table,
    );
  }
  const tables = body.tables?.map(normaliseTableName);
  const strategy = body.strategy ?? "overwrite";
  const selection = body.select;
  if (selection) {
    // A choice that names no row, or would break a key, is answered now (400, 422), not after
    // the restore was recorded.
    await planInTransaction(sql, {
      snapshotId: s.snapshot_id,
      strategy,
      selection,
      withDependencies: body.with_dependencies,
    });
  }
  return await createRestore(sql, {
    snapshotId: s.snapshot_id,
    tenantId: s.tenant_id,
    tables,
    strategy,
    selection,
    withDependencies: body.with_dependencies,
    idempotencyKey: idempotencyKey || undefined,
    // A point-in-time request is the same request whatever snapshot it built this time.
    requestHash: await sha256(
      JSON.stringify([
        ...sourceKey(body),
        tables ?? null,
        strategy,
        selection ?? null,
        body.with_dependencies ?? false,
      ]),
    ),
    initiatedBy: p.sub ?? p.role,
  });
}

/**
 * A plan, on a session of the budget's like any long read (see longRead), in a transaction that
 * is rolled back: it changes nothing, and a selective plan keeps its choice in temporary tables,
 * which live only inside one.
 */
function planInTransaction(sql: Sql, request: PlanRequest) {
  return inRolledBackTransaction(sql, (tx) => planRestore(tx, request));
}

function sourceKey(source: Source): string[] {
  return source.at !== undefined ? ["at", source.tenant_id, source.at] : [source.snapshot_id];
}

/** The status once the restore is no longer pending or running (a reused key's may still be). */
async function settled(sql: Sql, id: string): Promise<RestoreStatus> {
  for (;;) {
    const status = await getStatus(sql, id);
    if (status.status !== "pending" && status.status !== "running") return status;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function sha256(text: string): Promise<string> {
  const bytes = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

function inProcess(work: Promise<unknown>) {
  // executeRestore records its own failures; this only catches a lost database connection.
  work.catch((e) => console.error("pitr background restore failed:", (e as Error)?.message));
}

// Supabase's edge runtime keeps a worker alive until the promises handed to waitUntil settle.
declare const EdgeRuntime: { waitUntil(work: Promise<unknown>): void } | undefined;

export function edgeOrInProcess(work: Promise<unknown>) {
  if (typeof EdgeRuntime !== "undefined" && EdgeRuntime?.waitUntil) {
    EdgeRuntime.waitUntil(
      work.catch((e) => console.error("pitr background restore failed:", (e as Error)?.message)),
    );
  } else {
    inProcess(work);
  }
}

/** PITR_MAX_CONNECTIONS and the queue settings, when one of them is not a whole number ≥ 1. */
function budgetError(): Unavailable | undefined {
  try {
    budgetFromEnv();
    return undefined;
  } catch (e) {
    return new Unavailable("invalid_configuration", (e as Error).message);
  }
}

/**
 * The app as a deployed function builds it: database from SUPABASE_DB_URL / DATABASE_URL, keys
 * from SUPABASE_JWT_SECRET / SUPABASE_URL. A missing database, a transaction pooler or an invalid
 * connection budget answers every call with a clear 503 rather than failing at boot with an opaque
 * error.
 */
export function appFromEnv(): Hono {
  const url = configuredDatabaseUrl();
  const refusal = !url
    ? new Unavailable("no_database", "set SUPABASE_DB_URL or DATABASE_URL")
    : transactionPoolerReason(url)
    ? transactionPoolerError(transactionPoolerReason(url)!)
    : budgetError();
  if (refusal) {
    const app = new Hono();
    app.onError(onError);
    app.all("*", () => {
      throw refusal;
    });
    return app;
  }
  // PITR_MAX_CONNECTIONS for each instance: every instance of a function holds its own budget.
  return createApp({
    sql: connect(url!),
    auth: authConfigFromEnv(),
    runInBackground: edgeOrInProcess,
  });
}
