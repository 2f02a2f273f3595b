// The HTTP functions over a real socket, called with plain fetch and with supabase-js, against a
// real PostgreSQL. Every restore is checked on the rows it restored, not only on its answer.
import assert from "node:assert/strict";
import { createClient, FunctionsHttpError } from "@supabase/supabase-js";
import { createLocalJWKSet, exportJWK, generateKeyPair, SignJWT } from "jose";
import { connect } from "../shared/db/client.ts";
import { appFromEnv, createApp, FUNCTIONS } from "../shared/http/app.ts";
import { transactionPoolerReason } from "../shared/http/pooler.ts";
import { withDatabase } from "../shared/db/client.ts";
import { cleanup, dbTest, netStandIns, storeOf, testDatabase } from "./_db.ts";

const db = await testDatabase("http");
const sql = db.sql;

// Keys: an HS256 secret (legacy Supabase keys) and an ES256 key pair published as a JWKS.
const SECRET = "test-secret-for-pitr-http-tests-0123456789";
const es = await generateKeyPair("ES256", { extractable: true });
const other = await generateKeyPair("ES256", { extractable: true });
const jwk = { ...await exportJWK(es.publicKey), kid: "k1", alg: "ES256", use: "sig" };
const jwks = createLocalJWKSet({ keys: [jwk] });

const now = () => Math.floor(Date.now() / 1000);
function hs(claims: Record<string, unknown>, secret = SECRET, exp = now() + 3600) {
  return new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setIssuedAt()
    .setExpirationTime(exp).sign(new TextEncoder().encode(secret));
}
function es256(claims: Record<string, unknown>, key = es.privateKey) {
  return new SignJWT(claims).setProtectedHeader({ alg: "ES256", kid: "k1", typ: "JWT" })
    .setIssuedAt().setExpirationTime(now() + 3600).sign(key);
}
const user = (tenant: string, pitr_role?: string) => ({
  role: "authenticated",
  aud: "authenticated",
  sub: `user-${tenant}-${pitr_role}`,
  app_metadata: { tenant_id: tenant, ...(pitr_role ? { pitr_role } : {}) },
});
const service = await hs({ role: "service_role" });
const anon = await hs({ role: "anon" });
const admin101 = await hs(user("101", "admin"));
const viewer101 = await hs(user("101", "viewer"));
const plain101 = await hs(user("101"));

// The background restores of 202 answers, so a test can wait for them.
const background: Promise<unknown>[] = [];
const app = createApp({
  sql,
  auth: { jwtSecret: SECRET, jwks },
  runInBackground: (work) => background.push(work),
  log: () => {}, // the request log has its own tests (http_support.test.ts)
});
const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, app.fetch);
const base = `http://127.0.0.1:${server.addr.port}`;
const supabase = createClient(base, anon, {
  auth: { persistSession: false, autoRefreshToken: false },
});

interface Answer {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
}

/** Plain fetch. `body` is sent as JSON unless it is already a string. */
async function call(
  method: "GET" | "POST",
  name: string,
  options: { body?: unknown; token?: string | null; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...options.headers };
  const token = options.token === undefined ? service : options.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`${base}/functions/v1/${name}`, {
    method,
    headers,
    body: options.body === undefined
      ? undefined
      : typeof options.body === "string"
      ? options.body
      : JSON.stringify(options.body),
  });
  return { status: res.status, body: await res.json() };
}

/** supabase-js `functions.invoke`, the way the admin frontend calls. */
async function invoke(
  name: string,
  options: { body?: unknown; token?: string; method?: "GET" | "POST" } = {},
): Promise<Answer> {
  const { data, error, response } = await supabase.functions.invoke(name, {
    method: options.method ?? "POST",
    body: options.body as Record<string, unknown> | undefined,
    headers: { Authorization: `Bearer ${options.token ?? service}` },
  });
  if (error) {
    if (!(error instanceof FunctionsHttpError)) throw error;
    const res = error.context as Response;
    return { status: res.status, body: await res.json() };
  }
  return { status: response!.status, body: data };
}

async function digest(t: number | string): Promise<string> {
  const [r] = await sql<{ d: string }[]>`select public.tenant_digest(${t}::bigint) as d`;
  return r.d;
}
async function count(query: Promise<{ n: string }[]>): Promise<number> {
  return Number((await query)[0].n);
}
const historyRows = (tenant: string) =>
  count(sql`select count(*) as n from public.backup_pitr_rollback_history
    where tenant_id = ${tenant}`);

async function damage(t: number) {
  await sql`update public.users set display_name = 'hacked' where tenant_id = ${t} and email like 'u1%'`;
  await sql`delete from public.lessons where tenant_id = ${t} and body = 'Lesson 2'`;
  await sql`insert into public.lessons (tenant_id, body) values (${t}, 'intruder')`;
  await sql`update public.campaigns set title = 'bad import' where tenant_id = ${t}`;
}

async function snapshot(tenant: string, token = service) {
  const r = await call("POST", "pitr-snapshot", { body: { tenant_id: tenant }, token });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.snapshot_id as string;
}

async function settle() {
  while (background.length) await Promise.all(background.splice(0));
}

async function pollUntilDone(id: string) {
  for (;;) {
    const r = await call("GET", `pitr-status?rollback_id=${id}`);
    assert.equal(r.status, 200);
    if (r.body.status !== "pending" && r.body.status !== "running") return r.body;
    await new Promise((res) => setTimeout(res, 20));
  }
}

await sql`select public.seed_tenant(101, 40), public.seed_tenant(102, 40)`;

dbTest(
  "the OpenAPI document is served, matches the repository's file and covers every function",
  async () => {
    const r = await call("GET", "openapi.json", { token: null });
    assert.equal(r.status, 200);
    const file = JSON.parse(
      await Deno.readTextFile(new URL("../shared/http/openapi.json", import.meta.url)),
    );
    assert.deepEqual(r.body, file);
    for (const name of FUNCTIONS) assert.ok(r.body.paths[`/functions/v1/${name}`], name);
    assert.ok(r.body.paths["/functions/v1/pitr-snapshot"].get);
    assert.ok(r.body.paths["/functions/v1/pitr-execute"].post.responses["409"]);
  },
);

dbTest(
  "in process (app.request): a call without a token is 401, the path without /functions/v1 works too",
  async () => {
    const res = await app.request("/functions/v1/pitr-plan", { method: "POST", body: "{}" });
    assert.equal(res.status, 401);
    assert.equal((await res.json()).error.code, "missing_token");
    const bare = await app.request("/pitr-snapshot?tenant_id=101", {
      headers: { authorization: `Bearer ${service}` },
    });
    assert.equal(bare.status, 200);
    assert.ok(Array.isArray((await bare.json()).snapshots));
  },
);

dbTest(
  "POST pitr-snapshot answers 201 with every table's rows and checksum; GET lists newest first",
  async () => {
    const r = await call("POST", "pitr-snapshot", { body: { tenant_id: 101, label: "first" } });
    assert.equal(r.status, 201);
    assert.deepEqual(Object.keys(r.body).sort(), [
      "created_at",
      "label",
      "snapshot_id",
      "tables",
      "tenant_id",
      "total_rows",
    ]);
    assert.equal(r.body.tenant_id, "101");
    assert.equal(r.body.label, "first");
    const users = r.body.tables.find((t: { table: string }) => t.table === "public.users");
    assert.equal(
      users.rows,
      await count(sql`select count(*) as n from public.users where tenant_id = 101`),
    );
    assert.deepEqual(Object.keys(users).sort(), ["checksum", "rows", "table"]);
    assert.equal(r.body.tables.length, 11);
    assert.equal(
      r.body.total_rows,
      r.body.tables.reduce((n: number, t: { rows: number }) => n + t.rows, 0),
    );

    const partial = await invoke("pitr-snapshot", {
      body: { tenant_id: "101", tables: ["lessons", "crm.contacts"], label: "second" },
    });
    assert.equal(partial.status, 201);
    assert.deepEqual(partial.body.tables.map((t: { table: string }) => t.table).sort(), [
      "crm.contacts",
      "public.lessons",
    ]);

    const list = await invoke("pitr-snapshot?tenant_id=101", { method: "GET" });
    assert.equal(list.status, 200);
    assert.equal(list.body.snapshots[0].snapshot_id, partial.body.snapshot_id);
    assert.equal(list.body.snapshots[1].snapshot_id, r.body.snapshot_id);
    const times = list.body.snapshots.map((s: { created_at: string }) => s.created_at);
    assert.deepEqual(times, [...times].sort().reverse());
  },
);

dbTest(
  "validate and plan describe a restore and change nothing; plan hides engine-only fields",
  async () => {
    const id = await snapshot("101");
    const v = await invoke("pitr-validate", { body: { snapshot_id: id } });
    assert.equal(v.status, 200);
    assert.equal(v.body.valid, true);
    assert.ok(
      v.body.checks.some((c: { check: string; table?: string }) =>
        c.check === "checksum" && c.table === "public.users"
      ),
    );

    await damage(101);
    const damaged = await digest(101);
    const p = await invoke("pitr-plan", { body: { snapshot_id: id } });
    assert.equal(p.status, 200);
    assert.deepEqual(Object.keys(p.body).sort(), [
      "cycles",
      "dependencies_added",
      "order",
      "snapshot_id",
      "strategy",
      "tables",
      "tenant_id",
      "totals",
      "warnings",
    ]);
    assert.equal(p.body.strategy, "overwrite");
    const lessons = p.body.tables.find((t: { table: string }) => t.table === "public.lessons");
    assert.deepEqual(lessons, {
      table: "public.lessons",
      insert: 1,
      update: 0,
      delete: 1,
      unchanged: 4,
    });
    assert.ok(p.body.order.indexOf("public.tenants") < p.body.order.indexOf("public.users"));
    const merge = await call("POST", "pitr-plan", {
      body: { snapshot_id: id, tables: ["lessons"], strategy: "merge" },
    });
    assert.equal(merge.status, 200);
    assert.deepEqual(merge.body.tables, [{
      table: "public.lessons",
      insert: 1,
      update: 0,
      delete: 0,
      unchanged: 4,
    }]);
    assert.equal(await digest(101), damaged);
    // Put it back for the next test.
    const done = await call("POST", "pitr-execute?wait=true", { body: { snapshot_id: id } });
    assert.equal(done.body.status, "completed");
  },
);

dbTest(
  "execute?wait=true answers 200 with the final status and the tenant's rows are back exactly",
  async () => {
    const before = await digest(101);
    const other = await digest(102);
    const id = await snapshot("101");
    await damage(101);
    assert.notEqual(await digest(101), before);
    const r = await call("POST", "pitr-execute?wait=true", { body: { snapshot_id: id } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.status, "completed", JSON.stringify(r.body.error));
    assert.equal(r.body.progress_pct, 100);
    assert.equal(r.body.snapshot_id, id);
    assert.equal(r.body.tenant_id, "101");
    assert.equal(r.body.error, null);
    assert.ok(r.body.undo_snapshot_id);
    assert.equal(r.body.tables_restored.length, 11);
    assert.equal(await digest(101), before);
    assert.equal(await digest(102), other);

    const status = await invoke(`pitr-status?rollback_id=${r.body.rollback_id}`, { method: "GET" });
    assert.equal(status.status, 200);
    assert.deepEqual(status.body, { ...r.body, eta_seconds: status.body.eta_seconds });
  },
);

dbTest(
  "execute via supabase-js answers 202 at once, a merge of chosen tables runs in the background",
  async () => {
    const id = await snapshot("102");
    await sql`delete from public.lessons where tenant_id = 102 and body = 'Lesson 3'`;
    await sql`insert into public.lessons (tenant_id, body) values (102, 'kept')`;
    const r = await invoke("pitr-execute", {
      body: { snapshot_id: id, tables: ["lessons"], strategy: "merge" },
    });
    assert.equal(r.status, 202);
    assert.deepEqual(Object.keys(r.body).sort(), ["rollback_id", "status"]);
    assert.ok(["pending", "running", "completed"].includes(r.body.status));
    await settle();
    const final = await pollUntilDone(r.body.rollback_id);
    assert.equal(final.status, "completed", JSON.stringify(final.error));
    assert.equal(final.strategy, "merge");
    assert.deepEqual(final.tables_restored, ["public.lessons"]);
    const bodies = (await sql<{ body: string }[]>`
    select body from public.lessons where tenant_id = 102 order by body`).map((x) => x.body);
    assert.deepEqual(bodies, ["Lesson 1", "Lesson 2", "Lesson 3", "Lesson 4", "Lesson 5", "kept"]);
  },
);

dbTest(
  "an Idempotency-Key replays the first restore; the same key with another body is 409",
  async () => {
    const before = await digest(102);
    const id = await snapshot("102");
    const headers = { "idempotency-key": "key-1" };
    const first = await call("POST", "pitr-execute?wait=true", {
      body: { snapshot_id: id },
      headers,
    });
    assert.equal(first.status, 200);
    const again = await call("POST", "pitr-execute", { body: { snapshot_id: id }, headers });
    assert.equal(again.status, 202);
    assert.equal(again.body.rollback_id, first.body.rollback_id);
    assert.equal(again.body.status, "completed");
    const rows = await historyRows("102");
    const clash = await call("POST", "pitr-execute", {
      body: { snapshot_id: id, strategy: "merge" },
      headers,
    });
    assert.equal(clash.status, 409);
    assert.equal(clash.body.error.code, "idempotency_key_reused");
    assert.equal(await historyRows("102"), rows);
    assert.equal(await digest(102), before);
  },
);

dbTest(
  "bad input is 400: malformed JSON, unknown fields and values, hostile table names",
  async () => {
    const id = await snapshot("101");
    const before = await digest(101);
    const rows = await historyRows("101");
    const cases: [string, "GET" | "POST", unknown, string][] = [
      ["pitr-snapshot", "POST", "{not json", "malformed_json"],
      ["pitr-plan", "POST", '{"snapshot_id": ', "malformed_json"],
      ["pitr-execute", "POST", "[1,2", "malformed_json"],
      ["pitr-snapshot", "POST", { tenant_id: "101", colour: "red" }, "invalid_request"],
      ["pitr-snapshot", "POST", {}, "invalid_request"],
      ["pitr-snapshot", "POST", { tenant_id: { $gt: 1 } }, "invalid_request"],
      ["pitr-snapshot", "POST", { tenant_id: "101", tables: "users" }, "invalid_request"],
      ["pitr-snapshot", "POST", { tenant_id: "101", tables: [] }, "invalid_request"],
      ["pitr-validate", "POST", { snapshot_id: id, extra: 1 }, "invalid_request"],
      ["pitr-plan", "POST", { snapshot_id: id, strategy: "replace" }, "invalid_request"],
      ["pitr-execute", "POST", { snapshot_id: id, strategy: "MERGE" }, "invalid_request"],
      ["pitr-execute", "POST", { snapshot_id: id, tables: [1] }, "invalid_request"],
      ["pitr-drill", "POST", { tenant: "101" }, "invalid_request"],
      // PostgreSQL text cannot hold U+0000: refused at the edge, not a 500 from the database.
      ["pitr-snapshot", "POST", { tenant_id: "101", label: "a\u0000b" }, "invalid_request"],
      ["pitr-snapshot?tenant_id=1%0001", "GET", undefined, "invalid_request"],
      ["pitr-drill", "POST", { tenant_id: "\u0000" }, "invalid_request"],
      ["pitr-snapshot", "GET", undefined, "invalid_request"],
      [`pitr-snapshot?tenant_id=101&limit=5`, "GET", undefined, "invalid_request"],
      ["pitr-status", "GET", undefined, "invalid_request"],
      [`pitr-execute?wait=yes`, "POST", { snapshot_id: id }, "invalid_request"],
      [
        "pitr-snapshot",
        "POST",
        { tenant_id: "101", tables: ['users"; drop table x;--'] },
        "unknown_table",
      ],
      [
        "pitr-plan",
        "POST",
        { snapshot_id: id, tables: ["public.users; delete from users"] },
        "unknown_table",
      ],
      [
        "pitr-execute",
        "POST",
        { snapshot_id: id, tables: ['users"; drop table x;--'] },
        "unknown_table",
      ],
      ["pitr-plan", "POST", { snapshot_id: id, tables: ["scratch"] }, "unknown_table"],
      ["pitr-plan", "POST", { snapshot_id: id, tables: ["pg_catalog.pg_authid"] }, "unknown_table"],
    ];
    for (const [name, method, body, code] of cases) {
      const r = await call(method, name, { body });
      assert.equal(r.status, 400, `${name} ${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, code, `${name} ${JSON.stringify(body)}`);
      assert.equal(typeof r.body.error.message, "string");
    }
    const viaJs = await invoke("pitr-execute", {
      body: { snapshot_id: id, tables: ['users"; drop table x;--'] },
    });
    assert.equal(viaJs.status, 400);
    assert.equal(viaJs.body.error.code, "unknown_table");
    assert.equal(await historyRows("101"), rows);
    assert.equal(await digest(101), before);
    assert.equal(await count(sql`select count(*) as n from public.users`), 80);
  },
);

dbTest(
  "tokens: missing, expired, forged, alg none and garbage are 401; a JWKS-signed token is accepted",
  async () => {
    const header = (alg: string) => btoa(JSON.stringify({ alg, typ: "JWT" })).replace(/=+$/, "");
    const payload = btoa(JSON.stringify({ role: "service_role", exp: now() + 3600 }))
      .replace(/=+$/, "");
    const bad: [string | null, string][] = [
      [null, "missing_token"],
      [await hs({ role: "service_role" }, SECRET, now() - 60), "token_expired"],
      [
        await hs({ role: "service_role" }, "another-secret-another-secret-another"),
        "invalid_token",
      ],
      [`${header("none")}.${payload}.`, "invalid_token"],
      [`${header("HS512")}.${payload}.c2ln`, "invalid_token"],
      ["not-a-jwt", "invalid_token"],
      [await es256({ role: "service_role" }, other.privateKey), "invalid_token"],
    ];
    for (const name of FUNCTIONS) {
      const method = name === "pitr-status" ? "GET" : "POST";
      for (const [token, code] of bad) {
        const r = await call(method, name, { body: method === "POST" ? {} : undefined, token });
        assert.equal(r.status, 401, `${name} ${code}`);
        assert.equal(r.body.error.code, code, `${name} ${token}`);
      }
    }
    const viaJs = await invoke("pitr-snapshot?tenant_id=101", {
      method: "GET",
      token: await hs({ role: "service_role" }, SECRET, now() - 60),
    });
    assert.equal(viaJs.status, 401);
    // A basic auth header is not a bearer token.
    const basic = await fetch(`${base}/functions/v1/pitr-drill`, {
      method: "POST",
      headers: { authorization: "Basic dXNlcjpwYXNz" },
    });
    assert.equal(basic.status, 401);
    await basic.body?.cancel();

    const ok = await call("GET", "pitr-snapshot?tenant_id=101", {
      token: await es256({ role: "service_role" }),
    });
    assert.equal(ok.status, 200);
    const asym = await call("GET", "pitr-snapshot?tenant_id=101", {
      token: await es256(user("101", "viewer")),
    });
    assert.equal(asym.status, 200);
  },
);

dbTest("roles: a viewer reads but may not execute or snapshot; other roles are 403", async () => {
  const id = await snapshot("101");
  const before = await digest(101);
  const rows = await historyRows("101");
  for (
    const [name, method, body] of [
      ["pitr-snapshot?tenant_id=101", "GET", undefined],
      ["pitr-validate", "POST", { snapshot_id: id }],
      ["pitr-plan", "POST", { snapshot_id: id }],
    ] as const
  ) {
    const r = await call(method, name, { body, token: viewer101 });
    assert.equal(r.status, 200, `${name}: ${JSON.stringify(r.body)}`);
  }
  const refused = await invoke("pitr-execute", { body: { snapshot_id: id }, token: viewer101 });
  assert.equal(refused.status, 403);
  assert.equal(refused.body.error.code, "forbidden");
  for (
    const [name, body] of [
      ["pitr-execute?wait=true", { snapshot_id: id }],
      ["pitr-snapshot", { tenant_id: "101" }],
      ["pitr-drill", { tenant_id: "101" }],
    ] as const
  ) {
    const r = await call("POST", name, { body, token: viewer101 });
    assert.equal(r.status, 403, name);
  }
  for (const token of [anon, plain101, await hs({ role: "authenticated", aud: "authenticated" })]) {
    const r = await call("POST", "pitr-validate", { body: { snapshot_id: id }, token });
    assert.equal(r.status, 403);
  }
  assert.equal(await historyRows("101"), rows);
  assert.equal(await digest(101), before);

  const done = await call("POST", "pitr-execute?wait=true", {
    body: { snapshot_id: id },
    token: admin101,
  });
  assert.equal(done.status, 200);
  assert.equal(done.body.status, "completed");
  assert.equal(await digest(101), before);
  const status = await call("GET", `pitr-status?rollback_id=${done.body.rollback_id}`, {
    token: viewer101,
  });
  assert.equal(status.status, 200);
});

dbTest("tenants: one tenant's admin is refused another tenant's snapshot and restore", async () => {
  const id102 = await snapshot("102");
  const before = await digest(102);
  const rows = await historyRows("102");
  const done = await call("POST", "pitr-execute?wait=true", { body: { snapshot_id: id102 } });
  // A tenant named in the request is refused as such; an id of another tenant's snapshot or
  // restore is answered as an id that does not exist (tests/http_auth.test.ts).
  const refusals: [string, "GET" | "POST", unknown, number, string][] = [
    ["pitr-execute", "POST", { snapshot_id: id102 }, 404, "snapshot_not_found"],
    ["pitr-validate", "POST", { snapshot_id: id102 }, 404, "snapshot_not_found"],
    ["pitr-plan", "POST", { snapshot_id: id102 }, 404, "snapshot_not_found"],
    ["pitr-snapshot", "POST", { tenant_id: "102" }, 403, "forbidden_tenant"],
    ["pitr-snapshot?tenant_id=102", "GET", undefined, 403, "forbidden_tenant"],
    ["pitr-drill", "POST", { tenant_id: 102 }, 403, "forbidden_tenant"],
    [
      `pitr-status?rollback_id=${done.body.rollback_id}`,
      "GET",
      undefined,
      404,
      "restore_not_found",
    ],
  ];
  for (const [name, method, body, status, code] of refusals) {
    const r = await call(method, name, { body, token: admin101 });
    assert.equal(r.status, status, name);
    assert.equal(r.body.error.code, code);
  }
  const viaJs = await invoke("pitr-execute", { body: { snapshot_id: id102 }, token: admin101 });
  assert.equal(viaJs.status, 404);
  assert.equal(await historyRows("102"), rows + 1);
  assert.equal(await digest(102), before);
});

dbTest("unknown snapshots, restores and paths are 404", async () => {
  const missing = crypto.randomUUID();
  for (const name of ["pitr-validate", "pitr-plan", "pitr-execute"]) {
    const r = await call("POST", name, { body: { snapshot_id: missing } });
    assert.equal(r.status, 404, name);
    assert.equal(r.body.error.code, "snapshot_not_found");
  }
  const notUuid = await invoke("pitr-plan", { body: { snapshot_id: "'; select 1 --" } });
  assert.equal(notUuid.status, 404);
  const status = await call("GET", `pitr-status?rollback_id=${missing}`);
  assert.equal(status.status, 404);
  assert.equal(status.body.error.code, "restore_not_found");
  const path = await call("POST", "pitr-nothing", { body: {} });
  assert.equal(path.status, 404);
  assert.equal(path.body.error.code, "not_found");
});

dbTest(
  "a snapshot altered behind the service's back: validate says invalid, plan is 422, the restore fails snapshot_invalid before commit with nothing changed",
  async () => {
    const id = await snapshot("102");
    const [{ id: users }] = await sql<{ id: string }[]>`
    select id from pitr.backup_snapshot_tables
    where snapshot_id = ${id} and table_schema = 'public' and table_name = 'users'`;
    const store = await storeOf(sql, users);
    await sql`update pitr_store.${sql(store.table)} set display_name = 'forged'
    where pitr_tenant = ${store.tenant} and email = (select min(email) from pitr_store.${
      sql(store.table)
    }
      where pitr_tenant = ${store.tenant})`;
    await sql`update public.users set display_name = 'live' where tenant_id = 102`;
    const before = await digest(102);
    const rows = await historyRows("102");

    const v = await call("POST", "pitr-validate", { body: { snapshot_id: id } });
    assert.equal(v.status, 200);
    assert.equal(v.body.valid, false);
    const bad = v.body.checks.find((c: { ok: boolean }) => !c.ok);
    assert.equal(bad.check, "checksum");
    assert.equal(bad.table, "public.users");
    const plan = await call("POST", "pitr-plan", { body: { snapshot_id: id } });
    assert.equal(plan.status, 422);
    assert.equal(plan.body.error.code, "snapshot_invalid");
    // Execute checks the stored rows it writes, not every stored row up front.
    const exec = await call("POST", "pitr-execute?wait=true", { body: { snapshot_id: id } });
    assert.equal(exec.status, 200, JSON.stringify(exec.body));
    assert.equal(exec.body.status, "failed");
    assert.equal(exec.body.error.code, "snapshot_invalid");
    assert.equal(exec.body.error.table, "public.users");
    assert.equal(await digest(102), before);
    // The other tables of the snapshot are intact and may still be restored.
    const lessons = await call("POST", "pitr-execute?wait=true", {
      body: { snapshot_id: id, tables: ["lessons"] },
    });
    assert.equal(lessons.status, 200);
    assert.equal(lessons.body.status, "completed");
    assert.equal(await historyRows("102"), rows + 2);
    assert.equal(await digest(102), before);
  },
);

dbTest(
  "a drill restores and verifies, then rolls back: 200, rows unchanged, result recorded",
  async () => {
    await snapshot("102");
    await sql`update public.users set display_name = 'drifted' where tenant_id = 102`;
    const d = await digest(102);
    const one = await invoke("pitr-drill", { body: { tenant_id: 102 } });
    assert.equal(one.status, 200);
    assert.equal(one.body.drills.length, 1);
    const [r] = one.body.drills;
    assert.equal(r.tenant_id, "102");
    assert.equal(r.ok, true, r.message);
    assert.ok(r.rows > 0);
    assert.equal(await digest(102), d);
    const own = await call("POST", "pitr-drill", { token: admin101 });
    assert.equal(own.status, 200);
    assert.deepEqual(own.body.drills.map((x: { tenant_id: string }) => x.tenant_id), ["101"]);
    const all = await call("POST", "pitr-drill", { body: {} });
    assert.equal(all.status, 200);
    assert.deepEqual(all.body.drills.map((x: { tenant_id: string }) => x.tenant_id).sort(), [
      "101",
      "102",
    ]);
    assert.ok(all.body.drills.every((x: { ok: boolean }) => x.ok));
    assert.equal(await digest(102), d);
    assert.equal(
      await count(sql`select count(*) as n from public.backup_pitr_drills where tenant_id = '102'`),
      2,
    );
  },
);

dbTest(
  "an internal error is 500 with an id and neither SQL nor the database's message",
  async () => {
    const broken = connect(withDatabase(db.url, "pitr_no_such_database"), { max: 1 });
    const errors: unknown[][] = [];
    const log = console.error;
    console.error = (...args: unknown[]) => errors.push(args);
    try {
      const res = await createApp({ sql: broken, auth: { jwtSecret: SECRET } }).request(
        "/functions/v1/pitr-snapshot?tenant_id=101",
        { headers: { authorization: `Bearer ${service}` } },
      );
      assert.equal(res.status, 500);
      const body = await res.json();
      assert.equal(body.error.code, "internal");
      assert.match(body.error.message, /^internal error [0-9a-f-]{36}$/);
      assert.ok(errors.some((args) => String(args[0]).includes(body.error.message.slice(15))));
    } finally {
      console.error = log;
      await broken.end();
    }
  },
);

dbTest(
  "a transaction pooler is refused with a clear 503; a direct or session URL is not",
  async () => {
    assert.match(
      transactionPoolerReason(
        "postgres://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres",
      )!,
      /6543/,
    );
    assert.match(
      transactionPoolerReason("postgres://u:p@host:5432/db?pgbouncer=true")!,
      /pgbouncer/,
    );
    assert.equal(
      transactionPoolerReason("postgres://u:p@aws-0-eu-central-1.pooler.supabase.com:5432/db"),
      undefined,
    );
    assert.equal(
      transactionPoolerReason("postgres://u:p@db.ref.supabase.co:5432/postgres"),
      undefined,
    );
    const saved = Deno.env.get("SUPABASE_DB_URL");
    Deno.env.set("SUPABASE_DB_URL", "postgres://postgres.ref:pw@pooler.example:6543/postgres");
    try {
      const res = await appFromEnv().request("/functions/v1/pitr-status?rollback_id=x");
      assert.equal(res.status, 503);
      const body = await res.json();
      assert.equal(body.error.code, "transaction_pooler");
      assert.match(body.error.message, /session-mode/);
    } finally {
      if (saved === undefined) Deno.env.delete("SUPABASE_DB_URL");
      else Deno.env.set("SUPABASE_DB_URL", saved);
    }
  },
);

dbTest(
  "deployed configuration: SUPABASE_JWKS verifies user tokens, a project secret key is the service role",
  async () => {
    const names = [
      "SUPABASE_DB_URL",
      "SUPABASE_JWT_SECRET",
      "SUPABASE_URL",
      "SUPABASE_JWKS",
      "SUPABASE_SECRET_KEYS",
      "SUPABASE_SERVICE_ROLE_KEY",
    ];
    const saved = new Map(names.map((n) => [n, Deno.env.get(n)]));
    for (const n of names) Deno.env.delete(n);
    Deno.env.set("SUPABASE_DB_URL", db.url);
    Deno.env.set("SUPABASE_JWKS", JSON.stringify({ keys: [jwk] }));
    Deno.env.set(
      "SUPABASE_SECRET_KEYS",
      JSON.stringify({ default: "sb_secret_0123456789abcdefghij" }),
    );
    try {
      const deployed = appFromEnv();
      const get = (token: string) =>
        deployed.request("/pitr-snapshot?tenant_id=101", {
          headers: { authorization: `Bearer ${token}` },
        });
      const statuses = [
        (await get("sb_secret_0123456789abcdefghij")).status,
        (await get("sb_secret_0123456789abcdefghiX")).status,
        (await get(await es256(user("101", "viewer")))).status,
        (await get(await es256(user("102", "viewer")))).status,
        (await get(service)).status, // HS256, and no HS256 secret is configured here
      ];
      assert.deepEqual(statuses, [200, 401, 200, 403, 401]);
    } finally {
      for (const [n, v] of saved) v === undefined ? Deno.env.delete(n) : Deno.env.set(n, v);
    }
  },
);

dbTest(
  "the cron drill migration is a no-op without pg_cron, and its job's SQL posts to pitr-drill with Vault's secrets",
  async () => {
    const [{ n }] = await sql<
      { n: string }[]
    >`select count(*) as n from pg_namespace where nspname = 'cron'`;
    const [{ applied }] = await sql<{ applied: boolean }[]>`select exists (
    select from supabase_migrations.schema_migrations where version = '20261128000400') as applied`;
    assert.equal(applied, true);
    const hasCron = Number(n) > 0;
    const text = await Deno.readTextFile(
      new URL("../supabase/migrations/20261128000400_cron_drill.sql", import.meta.url),
    );
    const job = /\$job\$([\s\S]*)\$job\$/.exec(text)![1];
    if (hasCron) return; // a real Supabase database: the job is scheduled, not ours to run here
    // Stand-ins for Vault's view and pg_net's function, in a transaction that is rolled back.
    class Rollback {
      constructor(
        readonly none: number,
        readonly calls: { url: string; headers: Record<string, string>; body: unknown }[],
      ) {}
    }
    const posted = await sql.begin(async (tx) => {
      await netStandIns(tx);
      await tx.unsafe(job); // the repository's own migration text
      const none = await tx`select * from net.calls`;
      await tx`insert into vault.decrypted_secrets values
      ('project_url', 'https://ref.supabase.co'), ('service_role_key', 'key-1')`;
      await tx.unsafe(job);
      throw new Rollback(none.length, [...await tx<Rollback["calls"]>`select * from net.calls`]);
    }).catch((e) => {
      if (e instanceof Rollback) return e;
      throw e;
    });
    assert.equal(posted.none, 0);
    assert.equal(posted.calls.length, 1);
    assert.equal(posted.calls[0].url, "https://ref.supabase.co/functions/v1/pitr-drill");
    assert.equal(posted.calls[0].headers.Authorization, "Bearer key-1");
    assert.deepEqual(posted.calls[0].body, {});
  },
);

dbTest(
  "progress is visible mid-restore of a ~100k-row tenant; a second execute is 409; others run side by side",
  async () => {
    // seed_tenant's own users cost it quadratic time; bulk users bring the tenant to ~100k rows.
    await sql`select public.seed_tenant(201, 8000)`;
    await sql`insert into public.users (tenant_id, email, display_name, tags, profile)
    select 201, format('bulk%s@t201.example', i), format('Bulk %s', i), array['b', i::text],
      jsonb_build_object('i', i)
    from generate_series(1, 85000) i`;
    const rowsOf = (table: string) =>
      count(sql`select count(*) as n from ${sql(table)} where tenant_id = 201`);
    const counts = {
      users: await rowsOf("users"),
      campaigns: await rowsOf("campaigns"),
      enrollments: await rowsOf("enrollments"),
    };
    assert.deepEqual(counts, { users: 93000, campaigns: 2000, enrollments: 6000 });
    const before = await digest(201);
    const id = await snapshot("201");
    const id101 = await snapshot("101");
    const before101 = await digest(101);
    const total = (await call("GET", "pitr-snapshot?tenant_id=201")).body.snapshots[0].total_rows;
    assert.ok(total >= 100_000, `total_rows ${total}`);

    await sql`update public.users set display_name = 'bulk edit' where tenant_id = 201`;
    await sql`delete from public.enrollments where tenant_id = 201`;
    await sql`update public.campaigns set budget = 0 where tenant_id = 201`;
    await damage(101);

    const started = await invoke("pitr-execute", { body: { snapshot_id: id } });
    assert.equal(started.status, 202);
    const rollback = started.body.rollback_id;

    // At once: a second restore of the same tenant is refused, one of another tenant is not.
    const second = await call("POST", "pitr-execute", { body: { snapshot_id: id } });
    assert.equal(second.status, 409);
    assert.equal(second.body.error.code, "restore_in_progress");
    const side = await call("POST", "pitr-execute", { body: { snapshot_id: id101 } });
    assert.equal(side.status, 202);

    const seen: { status: string; pct: number; step: string }[] = [];
    let final;
    for (;;) {
      const r = await call("GET", `pitr-status?rollback_id=${rollback}`, { token: service });
      assert.equal(r.status, 200);
      seen.push({ status: r.body.status, pct: r.body.progress_pct, step: r.body.current_step });
      if (r.body.status === "running" && seen.filter((s) => s.status === "running").length === 1) {
        // While it runs, the 409 still holds.
        const third = await invoke("pitr-execute", { body: { snapshot_id: id } });
        assert.equal(third.status, 409);
      }
      if (r.body.status === "completed" || r.body.status === "failed") {
        final = r.body;
        break;
      }
      await new Promise((res) => setTimeout(res, 5));
    }
    await settle();
    assert.equal(final.status, "completed", JSON.stringify(final.error));
    const mid = seen.filter((s) => s.status === "running" && s.pct > 0 && s.pct < 100);
    assert.ok(mid.length > 0, `no progress seen mid-restore: ${JSON.stringify(seen.slice(-20))}`);
    const pcts = seen.map((s) => s.pct);
    assert.deepEqual(pcts, [...pcts].sort((a, b) => a - b), "progress never goes back");
    assert.equal(final.progress_pct, 100);
    assert.equal(final.rows_done, final.rows_total);
    assert.equal(await digest(201), before);

    const other = await pollUntilDone(side.body.rollback_id);
    assert.equal(other.status, "completed", JSON.stringify(other.error));
    assert.equal(await digest(101), before101);
  },
);

dbTest("stop the server", async () => {
  await settle();
  await server.shutdown();
});

cleanup(db);
