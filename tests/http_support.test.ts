// What support staff need on the day, over a real socket (fetch and supabase-js): lists, 409 ids,
// 405, required fields, tenant_empty, the request log, streamed progress. Asserts on rows.
import assert from "node:assert/strict";
import { createClient, FunctionsHttpError } from "@supabase/supabase-js";
import { createApp } from "../shared/http/app.ts";
import openapi from "../shared/http/openapi.json" with { type: "json" };
import { cleanup, dbTest, tenantDigest, testDatabase } from "./_db.ts";
import { serveTestApp, TEST_SECRET, token, userToken } from "./_http.ts";

// A restore of a locked row waits for it long enough to be found running.
Deno.env.set("PITR_LOCK_TIMEOUT_MS", "20000");

const db = await testDatabase("http_support");
const sql = db.sql;

const service = await token({ role: "service_role" });
const admin901 = await userToken("901", "admin");
const viewer901 = await userToken("901", "viewer");
const admin902 = await userToken("902", "admin");
const anon = await token({ role: "anon" });

const { server, background, log, origin } = serveTestApp(sql);
const base = `${origin}/functions/v1`;
const supabase = createClient(origin, anon, {
  auth: { persistSession: false, autoRefreshToken: false },
});

interface Answer {
  status: number;
  headers: Headers;
  // deno-lint-ignore no-explicit-any
  body: any;
}

type Method = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";

async function call(
  method: Method,
  path: string,
  options: { body?: unknown; bearer?: string | null; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const bearer = options.bearer === undefined ? service : options.bearer;
  const res = await fetch(`${base}/${path}`, {
    method,
    headers: {
      ...(bearer === null ? {} : { authorization: `Bearer ${bearer}` }),
      ...(options.body === undefined ? {} : { "content-type": "application/json" }),
      ...options.headers,
    },
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  return { status: res.status, headers: res.headers, body: await res.json() };
}

/** supabase-js `functions.invoke`, the way the admin frontend calls. */
async function invoke(
  name: string,
  options: { body?: Record<string, unknown>; bearer?: string; method?: Method } = {},
): Promise<Omit<Answer, "headers">> {
  const { data, error, response } = await supabase.functions.invoke(name, {
    method: options.method ?? "POST",
    body: options.body,
    headers: { Authorization: `Bearer ${options.bearer ?? service}` },
  });
  if (error) {
    if (!(error instanceof FunctionsHttpError)) throw error;
    const res = error.context as Response;
    return { status: res.status, body: await res.json() };
  }
  return { status: response!.status, body: data };
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));
const digest = (t: number) => tenantDigest(sql, t);
const count = async (query: Promise<{ n: string }[]>) => Number((await query)[0].n);
const historyRows = (tenant: string) =>
  count(sql`select count(*) as n from public.backup_pitr_rollback_history
    where tenant_id = ${tenant}`);
const snapshotRows = (tenant?: string) =>
  count(sql`select count(*) as n from public.backup_snapshots
    where ${tenant === undefined ? sql`true` : sql`tenant_id = ${tenant}`}`);
async function settle() {
  while (background.length) await Promise.all(background.splice(0));
}
async function snapshot(tenant: string): Promise<string> {
  const r = await call("POST", "pitr-snapshot", { body: { tenant_id: tenant } });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.snapshot_id;
}

await sql`select public.seed_tenant(901, 20), public.seed_tenant(902, 20), public.seed_tenant(903, 3)`;

const SUMMARY_KEYS = [
  "completed_at",
  "rollback_id",
  "rows_total",
  "snapshot_id",
  "started_at",
  "status",
  "strategy",
];

/** The tenant's history rows as the list form of pitr-status must show them. */
async function historyOf(tenant: string) {
  const rows = await sql<
    {
      id: string;
      snapshot_id: string;
      strategy: string;
      status: string;
      started_at: Date | null;
      completed_at: Date | null;
      rows_total: string | null;
    }[]
  >`select id, snapshot_id, strategy, status, started_at, completed_at, rows_total
    from public.backup_pitr_rollback_history where tenant_id = ${tenant}
    order by created_at desc, id`;
  return rows.map((r) => ({
    rollback_id: r.id,
    snapshot_id: r.snapshot_id,
    strategy: r.strategy,
    status: r.status,
    started_at: r.started_at?.toISOString() ?? null,
    completed_at: r.completed_at?.toISOString() ?? null,
    rows_total: r.rows_total === null ? null : Number(r.rows_total),
  }));
}

dbTest(
  "GET pitr-status?tenant_id= lists that tenant's restores newest first, exactly as recorded",
  async () => {
    const s901 = await snapshot("901");
    const first = await call("POST", "pitr-execute?wait=true", { body: { snapshot_id: s901 } });
    const second = await call("POST", "pitr-execute?wait=true", {
      body: { snapshot_id: s901, tables: ["lessons"], strategy: "merge" },
    });
    const other = await call("POST", "pitr-execute?wait=true", {
      body: { snapshot_id: await snapshot("902") },
    });
    assert.deepEqual([first.status, second.status, other.status], [200, 200, 200]);

    const list = await call("GET", "pitr-status?tenant_id=901");
    assert.equal(list.status, 200);
    assert.deepEqual(Object.keys(list.body), ["restores"]);
    assert.deepEqual(list.body.restores, await historyOf("901"));
    assert.deepEqual(
      list.body.restores.map((r: { rollback_id: string }) => r.rollback_id),
      [second.body.rollback_id, first.body.rollback_id],
    );
    for (const r of list.body.restores) assert.deepEqual(Object.keys(r).sort(), SUMMARY_KEYS);
    assert.equal(list.body.restores[0].strategy, "merge");
    assert.equal(list.body.restores[0].status, "completed");
    assert.equal(list.body.restores[1].rows_total, first.body.rows_total);

    // A viewer of the tenant through supabase-js; `limit` keeps the newest.
    const one = await invoke("pitr-status?tenant_id=901&limit=1", {
      method: "GET",
      bearer: viewer901,
    });
    assert.equal(one.status, 200);
    assert.deepEqual(one.body.restores, [list.body.restores[0]]);
    assert.deepEqual((await call("GET", "pitr-status?tenant_id=903")).body, { restores: [] });

    const refused = await call("GET", "pitr-status?tenant_id=901", { bearer: admin902 });
    assert.equal(refused.status, 403);
    assert.equal(refused.body.error.code, "forbidden_tenant");
    for (
      const query of [
        "tenant_id=901&limit=0",
        "tenant_id=901&limit=101",
        "tenant_id=901&limit=x",
        "tenant_id=901&limit=1.5",
        "tenant_id=901&limit=-1",
        `tenant_id=901&rollback_id=${first.body.rollback_id}`,
        `rollback_id=${first.body.rollback_id}&limit=2`,
      ]
    ) {
      const r = await call("GET", `pitr-status?${query}`);
      assert.equal(r.status, 400, query);
      assert.equal(r.body.error.code, "invalid_request", query);
    }
  },
);

dbTest(
  "the OpenAPI document describes the list form of pitr-status and the new error codes",
  async () => {
    // deno-lint-ignore no-explicit-any
    const doc = (await call("GET", "openapi.json", { bearer: null })).body as any;
    assert.deepEqual(doc, openapi);
    const status = doc.paths["/functions/v1/pitr-status"].get;
    assert.deepEqual(
      status.parameters.map((p: { name: string; required: boolean }) => [p.name, p.required]),
      [["rollback_id", false], ["tenant_id", false], ["limit", false]],
    );
    const forms = status.responses["200"].content["application/json"].schema.oneOf
      .map((s: { $ref: string }) => s.$ref);
    assert.deepEqual(forms, ["#/components/schemas/Status", "#/components/schemas/RestoreList"]);
    const item = doc.components.schemas.RestoreList.properties.restores.items;
    assert.deepEqual([...item.required].sort(), SUMMARY_KEYS);
    assert.deepEqual(Object.keys(item.properties).sort(), SUMMARY_KEYS);
    // Every key of a real list answer is in the contract, and nothing else.
    const list = await call("GET", "pitr-status?tenant_id=901");
    for (const r of list.body.restores) assert.deepEqual(Object.keys(r).sort(), SUMMARY_KEYS);
    assert.ok(doc.components.schemas.Error.properties.error.properties.rollback_id);
    const snapshot = doc.paths["/functions/v1/pitr-snapshot"].post;
    assert.match(snapshot.responses["422"].description, /tenant_empty/);
    assert.ok(doc.components.schemas.SnapshotRequest.properties.allow_empty);
    assert.match(
      doc.paths["/functions/v1/pitr-execute"].post.responses["409"].description,
      /restore_in_progress; `error.rollback_id`/,
    );
    assert.match(doc.info.description, /405 method_not_allowed with an Allow header/);
    assert.match(doc.info.description, /tenant_id is required/);
  },
);

dbTest(
  "a lost 202: the list finds the running restore, a second execute's 409 names it, cancel stops it",
  async () => {
    const snap = await snapshot("901");
    await sql`update public.lessons set body = body || ' (bad import)' where tenant_id = 901`;
    const damaged = await digest(901);
    // Another session holds the tenant's lessons, so the restore waits, running, on the lock.
    const holder = await sql.reserve();
    await holder`begin`;
    await holder`select 1 from public.lessons where tenant_id = 901 for update`;
    let lost: string;
    try {
      const started = await call("POST", "pitr-execute", { body: { snapshot_id: snap } });
      assert.equal(started.status, 202);
      lost = started.body.rollback_id; // the answer support never saw

      let found;
      for (let i = 0; i < 400 && found?.status !== "running"; i++) {
        const list = await call("GET", "pitr-status?tenant_id=901&limit=5", { bearer: viewer901 });
        assert.equal(list.status, 200);
        found = list.body.restores[0];
        await sleep(25);
      }
      assert.equal(found.status, "running");
      assert.equal(found.rollback_id, lost);
      assert.equal(found.completed_at, null);
      assert.ok(found.started_at);
      const [active] = await sql<{ id: string }[]>`select id
        from public.backup_pitr_rollback_history
        where tenant_id = '901' and status in ('pending', 'running')`;
      assert.equal(active.id, found.rollback_id);

      const rows = await historyRows("901");
      const again = await call("POST", "pitr-execute", { body: { snapshot_id: snap } });
      assert.equal(again.status, 409);
      assert.deepEqual(Object.keys(again.body.error).sort(), ["code", "message", "rollback_id"]);
      assert.equal(again.body.error.code, "restore_in_progress");
      assert.equal(again.body.error.rollback_id, active.id);
      const viaJs = await invoke("pitr-execute", { body: { snapshot_id: snap } });
      assert.equal(viaJs.status, 409);
      assert.equal(viaJs.body.error.rollback_id, active.id);
      assert.equal(await historyRows("901"), rows);

      const cancelled = await call("POST", "pitr-execute/cancel", {
        body: { rollback_id: found.rollback_id },
        bearer: admin901,
      });
      assert.equal(cancelled.status, 200);
      assert.equal(cancelled.body.status, "cancelled");
    } finally {
      await holder`rollback`;
      holder.release();
    }
    await settle();
    const [row] = await sql<{ status: string }[]>`select status
      from public.backup_pitr_rollback_history where id = ${lost}`;
    assert.equal(row.status, "cancelled");
    assert.equal(await digest(901), damaged);
    const after = await call("GET", "pitr-status?tenant_id=901&limit=1");
    assert.equal(after.body.restores[0].rollback_id, lost);
    assert.equal(after.body.restores[0].status, "cancelled");
    assert.ok(after.body.restores[0].completed_at);
    // Put the tenant back for the tests after this one.
    const back = await call("POST", "pitr-execute?wait=true", { body: { snapshot_id: snap } });
    assert.equal(back.body.status, "completed", JSON.stringify(back.body.error));
  },
);

dbTest(
  "a known function called with the wrong method is 405 with Allow, before any token is read",
  async () => {
    const snapshots = await snapshotRows();
    const history = await historyRows("901");
    const documented = (path: string) =>
      Object.keys(
        (openapi.paths as Record<string, Record<string, unknown>>)[`/functions/v1/${path}`] ??
          { get: 1 }, // openapi.json itself
      ).map((m) => m.toUpperCase()).sort();
    const cases: [string, Method][] = [
      ["pitr-snapshot", "PUT"],
      ["pitr-snapshot", "DELETE"],
      ["pitr-validate", "GET"],
      ["pitr-plan", "DELETE"],
      ["pitr-execute", "GET"],
      ["pitr-execute", "PATCH"],
      ["pitr-execute/cancel", "GET"],
      ["pitr-execute/cancel", "DELETE"],
      ["pitr-status", "POST"],
      ["pitr-drill", "DELETE"],
      ["openapi.json", "POST"],
    ];
    for (const [path, method] of cases) {
      for (const bearer of [service, null, "not-a-token"]) {
        const r = await call(method, path, { bearer });
        assert.equal(r.status, 405, `${method} ${path}`);
        assert.equal(r.body.error.code, "method_not_allowed");
        assert.match(r.body.error.message, new RegExp(`not ${method}$`));
        const allow = r.headers.get("allow")!.split(", ").sort();
        assert.deepEqual(allow, documented(path), `${method} ${path}`);
      }
    }
    // The path a deployed function sees, without /functions/v1, and supabase-js.
    const bare = await fetch(`${origin}/pitr-plan`, { method: "GET" });
    assert.equal(bare.status, 405);
    assert.equal(bare.headers.get("allow"), "POST");
    await bare.body?.cancel();
    const viaJs = await invoke("pitr-status", { method: "PUT", body: { tenant_id: "901" } });
    assert.equal(viaJs.status, 405);
    assert.equal(viaJs.body.error.code, "method_not_allowed");
    // A CORS preflight is still answered, and an unknown path is still 404.
    const preflight = await fetch(`${base}/pitr-plan`, {
      method: "OPTIONS",
      headers: { origin: "https://admin.example", "access-control-request-method": "POST" },
    });
    assert.equal(preflight.status, 204);
    await preflight.body?.cancel();
    assert.equal((await call("GET", "pitr-nothing")).status, 404);
    assert.equal(await snapshotRows(), snapshots);
    assert.equal(await historyRows("901"), history);
  },
);

dbTest("a missing required field is 400 saying it is required, by name", async () => {
  const snapshots = await snapshotRows();
  const cases: [Method, string, unknown, RegExp][] = [
    ["POST", "pitr-snapshot", {}, /^tenant_id is required$/],
    ["POST", "pitr-snapshot", { label: "x", tables: ["users"] }, /^tenant_id is required$/],
    ["GET", "pitr-snapshot", undefined, /^tenant_id is required$/],
    ["POST", "pitr-execute/cancel", {}, /^rollback_id is required$/],
    ["DELETE", "pitr-execute", undefined, /^rollback_id is required$/],
    ["GET", "pitr-status", undefined, /rollback_id or tenant_id is required/],
    ["POST", "pitr-validate", {}, /snapshot_id, or tenant_id and at, is required/],
    ["POST", "pitr-plan", { tenant_id: "901" }, /^at: required with tenant_id$/],
    ["POST", "pitr-execute", { at: "2026-11-28T14:32:00Z" }, /^tenant_id: required with at$/],
  ];
  for (const [method, path, body, message] of cases) {
    const r = await call(method, path, { body });
    assert.equal(r.status, 400, `${method} ${path}`);
    assert.equal(r.body.error.code, "invalid_request");
    assert.match(r.body.error.message, message, `${method} ${path}`);
  }
  const viaJs = await invoke("pitr-snapshot", { body: { label: "no tenant" } });
  assert.equal(viaJs.status, 400);
  assert.equal(viaJs.body.error.message, "tenant_id is required");
  assert.equal(await snapshotRows(), snapshots);
});

dbTest(
  "a snapshot of a tenant without rows is 422 tenant_empty and keeps nothing, unless allow_empty",
  async () => {
    const total = await snapshotRows();
    const typo = await call("POST", "pitr-snapshot", { body: { tenant_id: "9O1" } });
    assert.equal(typo.status, 422);
    assert.equal(typo.body.error.code, "tenant_empty");
    assert.match(typo.body.error.message, /no row in any protected table.*allow_empty/);
    const viaJs = await invoke("pitr-snapshot", { body: { tenant_id: "9O1", label: "typo" } });
    assert.equal(viaJs.status, 422);
    assert.equal(viaJs.body.error.code, "tenant_empty");
    assert.equal(await snapshotRows("9O1"), 0);
    assert.equal(await snapshotRows(), total);

    // A tenant with rows, but none in the tables asked for.
    await sql`delete from public.lessons where tenant_id = 903`;
    const none = await call("POST", "pitr-snapshot", {
      body: { tenant_id: "903", tables: ["lessons"] },
    });
    assert.equal(none.status, 422);
    assert.equal(none.body.error.code, "tenant_empty");
    assert.match(none.body.error.message, /the tables given/);
    assert.equal(await snapshotRows("903"), 0);
    assert.equal((await call("POST", "pitr-snapshot", { body: { tenant_id: "903" } })).status, 201);

    const bad = await call("POST", "pitr-snapshot", {
      body: { tenant_id: "9O1", allow_empty: "yes" },
    });
    assert.equal(bad.status, 400);
    const kept = await call("POST", "pitr-snapshot", {
      body: { tenant_id: "9O1", allow_empty: true, label: "empty on purpose" },
    });
    assert.equal(kept.status, 201);
    assert.equal(kept.body.total_rows, 0);
    assert.ok(kept.body.tables.length > 0);
    assert.ok(kept.body.tables.every((t: { rows: number }) => t.rows === 0));
    const [row] = await sql<{ id: string; total_rows: string; label: string }[]>`
      select id, total_rows, label from public.backup_snapshots where tenant_id = '9O1'`;
    assert.deepEqual([row.id, Number(row.total_rows), row.label], [
      kept.body.snapshot_id,
      0,
      "empty on purpose",
    ]);
  },
);

dbTest(
  "the server logs one line per request: method, path, status, ms, ids; never a token, body or row",
  async () => {
    log.splice(0);
    const label = `label-${crypto.randomUUID()}`;
    const key = `incident-${crypto.randomUUID()}`;
    const [{ email }] = await sql<{ email: string }[]>`
      select email from public.users where tenant_id = 901 order by email limit 1`;
    const badToken = `forged-${crypto.randomUUID()}`;

    const snap = await call("POST", "pitr-snapshot", { body: { tenant_id: "901", label } });
    const done = await call("POST", "pitr-execute?wait=true", {
      body: { snapshot_id: snap.body.snapshot_id },
      headers: { "idempotency-key": key },
    });
    const id = done.body.rollback_id;
    const sid = snap.body.snapshot_id;
    const answers = [
      snap.status,
      done.status,
      (await call("GET", `pitr-status?rollback_id=${id}`, { bearer: viewer901 })).status,
      (await call("GET", "pitr-status?tenant_id=901&limit=3")).status,
      (await call("POST", "pitr-plan", { body: { snapshot_id: sid }, bearer: badToken })).status,
      (await call("POST", "pitr-validate", { body: { snapshot_id: sid, tables: [email] } }))
        .status,
      (await call("GET", "pitr-plan")).status,
      (await call("POST", "pitr-nothing", { body: { email } })).status,
      (await invoke(`pitr-status?rollback_id=${id}`, { method: "GET" })).status,
    ];
    assert.deepEqual(answers, [201, 200, 200, 200, 401, 400, 405, 404, 200]);
    assert.equal(log.length, answers.length, log.join("\n"));
    const ms = String.raw`\d+ms`;
    const expected = [
      `POST /functions/v1/pitr-snapshot 201 ${ms} snapshot_id=${sid}`,
      `POST /functions/v1/pitr-execute 200 ${ms} snapshot_id=${sid} rollback_id=${id}`,
      `GET /functions/v1/pitr-status 200 ${ms} rollback_id=${id}`,
      `GET /functions/v1/pitr-status 200 ${ms}`,
      `POST /functions/v1/pitr-plan 401 ${ms}`,
      `POST /functions/v1/pitr-validate 400 ${ms} snapshot_id=${sid}`,
      `GET /functions/v1/pitr-plan 405 ${ms}`,
      `POST /functions/v1/pitr-nothing 404 ${ms}`,
      `GET /functions/v1/pitr-status 200 ${ms} rollback_id=${id}`,
    ];
    expected.forEach((line, i) => assert.match(log[i], new RegExp(`^${line}$`), log[i]));
    for (const line of log) {
      for (const secret of [service, viewer901, badToken, "Bearer", label, key, email, "tenant"]) {
        assert.ok(!line.includes(secret), `${line} holds ${secret.slice(0, 20)}`);
      }
    }

    // The default: one line per request on stdout.
    const printed: string[] = [];
    const print = console.log;
    console.log = (...args: unknown[]) => printed.push(args.join(" "));
    try {
      const app = createApp({ sql, auth: { jwtSecret: TEST_SECRET } });
      const res = await app.request(`/functions/v1/pitr-status?rollback_id=${id}`, {
        headers: { authorization: `Bearer ${service}` },
      });
      assert.equal(res.status, 200);
      await res.body?.cancel();
    } finally {
      console.log = print;
    }
    assert.equal(printed.length, 1);
    assert.match(
      printed[0],
      new RegExp(`^GET /functions/v1/pitr-status 200 ${ms} rollback_id=${id}$`),
    );
  },
);

const MIGRATION = new URL(
  "../supabase/migrations/20261128200000_realtime_history.sql",
  import.meta.url,
);
const published = async (tx: typeof sql) =>
  (await tx<{ table: string }[]>`select format('%s.%s', schemaname, tablename) as table
    from pg_publication_tables where pubname = 'supabase_realtime' order by 1`).map((r) => r.table);

dbTest(
  "the realtime migration adds the history table to supabase_realtime where it exists, once; elsewhere nothing",
  async () => {
    const [{ applied, publication }] = await sql<{ applied: boolean; publication: boolean }[]>`
      select exists (select from supabase_migrations.schema_migrations
          where version = '20261128200000') as applied,
        exists (select from pg_publication where pubname = 'supabase_realtime') as publication`;
    assert.equal(applied, true);
    assert.equal(publication, false, "a plain PostgreSQL has no supabase_realtime");
    const text = await Deno.readTextFile(MIGRATION);
    class Rollback {
      constructor(readonly seen: string[][]) {}
    }
    const outcome = await sql.begin(async (tx) => {
      const seen: string[][] = [];
      await tx.unsafe(text); // the repository's own migration: no publication, nothing happens
      seen.push(await published(tx as unknown as typeof sql));
      await tx`create publication supabase_realtime`;
      await tx.unsafe(text);
      await tx.unsafe(text);
      seen.push(await published(tx as unknown as typeof sql));
      await tx`drop publication supabase_realtime`;
      await tx`create publication supabase_realtime for all tables`;
      await tx.unsafe(text);
      seen.push(
        (await published(tx as unknown as typeof sql)).filter((t) =>
          t === "public.backup_pitr_rollback_history"
        ),
      );
      throw new Rollback(seen);
    }).catch((e) => {
      if (e instanceof Rollback) return e;
      throw e;
    });
    assert.deepEqual(outcome.seen, [
      [],
      ["public.backup_pitr_rollback_history"],
      ["public.backup_pitr_rollback_history"],
    ]);
  },
);

// ---- Progress streamed by logical decoding, as Supabase Realtime reads it ----

interface Change {
  op: "insert" | "update" | "delete";
  table: string;
  row: Record<string, string | null>;
}

/**
 * Reads pgoutput's protocol 1 messages (one per row of pg_logical_slot_get_binary_changes):
 * Relation messages name the columns, Insert/Update/Delete carry the new (or old) row as text.
 */
function decodePgoutput(messages: Uint8Array[]): Change[] {
  const relations = new Map<number, { table: string; columns: string[] }>();
  const out: Change[] = [];
  for (const m of messages) {
    const view = new DataView(m.buffer, m.byteOffset, m.byteLength);
    let at = 1;
    const int8 = () => view.getUint8(at++);
    const int16 = () => (at += 2, view.getInt16(at - 2));
    const int32 = () => (at += 4, view.getInt32(at - 4));
    const text = () => {
      const end = m.indexOf(0, at);
      const s = new TextDecoder().decode(m.subarray(at, end));
      at = end + 1;
      return s;
    };
    const tuple = (columns: string[]) => {
      const row: Record<string, string | null> = {};
      const n = int16();
      for (let i = 0; i < n; i++) {
        const kind = String.fromCharCode(int8());
        if (kind === "t") {
          const len = int32();
          row[columns[i]] = new TextDecoder().decode(m.subarray(at, at + len));
          at += len;
        } else row[columns[i]] = null; // 'n' null, 'u' unchanged TOAST
      }
      return row;
    };
    const kind = String.fromCharCode(m[0]);
    if (kind === "R") {
      const oid = int32();
      const table = `${text()}.${text()}`;
      int8(); // replica identity
      const columns: string[] = [];
      for (let n = int16(), i = 0; i < n; i++) {
        int8();
        columns.push(text());
        int32();
        int32();
      }
      relations.set(oid, { table, columns });
    } else if (kind === "I" || kind === "U" || kind === "D") {
      const rel = relations.get(int32())!;
      let marker = String.fromCharCode(int8());
      if (kind === "U" && (marker === "K" || marker === "O")) {
        tuple(rel.columns);
        marker = String.fromCharCode(int8());
      }
      const op = kind === "I" ? "insert" : kind === "U" ? "update" : "delete";
      out.push({ op, table: rel.table, row: tuple(rel.columns) });
    }
  }
  return out;
}

const [{ wal_level: walLevel }] = await sql<{ wal_level: string }[]>`show wal_level`;

/** What a user's JWT may select of a history row: the check Realtime makes before delivering. */
async function visibleTo(tenant: string, rollbackId: string) {
  return await sql.begin(async (tx) => {
    const claims = JSON.stringify({
      role: "authenticated",
      app_metadata: { tenant_id: tenant, pitr_role: "viewer" },
    });
    await tx`select set_config('request.jwt.claims', ${claims}, true)`;
    await tx`select set_config('role', 'authenticated', true)`;
    return [
      ...await tx<{ status: string; progress_pct: string }[]>`select status, progress_pct
        from public.backup_pitr_rollback_history where id = ${rollbackId}`,
    ];
  });
}

dbTest(
  "with the publication, a restore's progress streams as changes of its history row only, which RLS shows to its tenant alone",
  async () => {
    await sql`create publication supabase_realtime`;
    await sql.unsafe(await Deno.readTextFile(MIGRATION)); // the repository's own migration
    const slot = `pitr_test_${crypto.randomUUID().slice(0, 8)}`;
    const session = await sql.reserve();
    try {
      await session`select pg_create_logical_replication_slot(${slot}, 'pgoutput', true)`;
      const snap = await snapshot("902");
      const good = await digest(902);
      await sql`update public.lessons set body = 'stream me' where tenant_id = 902`;
      await sql`update public.users set display_name = 'edited' where tenant_id = 902`;
      const started = await invoke("pitr-execute", { body: { snapshot_id: snap } });
      assert.equal(started.status, 202);
      const id = started.body.rollback_id;
      await settle();
      assert.equal(await digest(902), good);

      const messages = await session<{ data: Uint8Array }[]>`
        select data from pg_logical_slot_get_binary_changes(${slot}, null, null,
          'proto_version', '1', 'publication_names', 'supabase_realtime')`;
      const changes = decodePgoutput(messages.map((r) => r.data));
      // The users and lessons the restore wrote, and the snapshots, are not published.
      assert.deepEqual([...new Set(changes.map((c) => c.table))], [
        "public.backup_pitr_rollback_history",
      ]);
      const ours = changes.filter((c) => c.row.id === id);
      assert.equal(ours[0].op, "insert");
      assert.equal(ours[0].row.status, "pending");
      assert.equal(ours[0].row.tenant_id, "902");
      const statuses = ours.map((c) => c.row.status);
      assert.ok(statuses.includes("running"), statuses.join());
      assert.equal(statuses.at(-1), "completed");
      const pcts = ours.map((c) => Number(c.row.progress_pct));
      assert.deepEqual(pcts, [...pcts].sort((a, b) => a - b), "progress never goes back");
      assert.ok(pcts.some((p) => p > 0 && p < 100), `no progress between: ${pcts.join()}`);
      assert.equal(pcts.at(-1), 100);

      assert.deepEqual(await visibleTo("902", id), [{
        status: "completed",
        progress_pct: "100.00",
      }]);
      assert.deepEqual(await visibleTo("901", id), []);
    } finally {
      await session`select pg_drop_replication_slot(${slot})
        where exists (select from pg_replication_slots where slot_name = ${slot})`;
      session.release();
      await sql`drop publication if exists supabase_realtime`;
    }
  },
  // Logical decoding needs wal_level = logical, as on Supabase and in the embedded PostgreSQL.
  { ignore: walLevel !== "logical" },
);

dbTest("stop the server", async () => {
  await settle();
  await server.shutdown();
});

cleanup(db);
