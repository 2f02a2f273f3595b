// Hostile and broken input, property-based (fast-check): random JSON bodies, table names, tenant
// ids, moments, query strings and headers against every endpoint over a real socket, with valid
// tokens. Every answer must be a 2xx that fits the OpenAPI contract or a 4xx with the error shape,
// never a 5xx; and at the end a canary table and every seeded tenant's rows must be unchanged.
//
// CI runs a fixed seed and 200 runs. To search longer, or to replay a failure's seed:
//   PITR_FUZZ_RUNS=5000 PITR_FUZZ_SEED=12345 deno task test tests/fuzz.test.ts
import assert from "node:assert/strict";
import fc from "fast-check";
import openapi from "../shared/http/openapi.json" with { type: "json" };
import { cleanup, clearMoment, dbTest, testDatabase } from "./_db.ts";
import { serveTestApp, token, userToken } from "./_http.ts";

const RUNS = Number(Deno.env.get("PITR_FUZZ_RUNS") ?? 200);
const SEED = Number(Deno.env.get("PITR_FUZZ_SEED") ?? 20261128);

const db = await testDatabase("fuzz");
const sql = db.sql;

const user = userToken;
const TOKENS = {
  service: await token({ role: "service_role" }),
  admin801: await user("801", "admin"),
  viewer801: await user("801", "viewer"),
  admin802: await user("802", "admin"),
  viewer802: await user("802", "viewer"),
  plain801: await user("801"),
  anon: await token({ role: "anon" }),
};

// Restores of 202 answers run in the background; the end waits for them before comparing rows.
const { server, background, origin: base } = serveTestApp(sql, { swallowBackground: true });

const now = () => clearMoment(sql);

// Tenants, and a canary: a protected table (it has a tenant_id column) that nothing may change.
const TENANTS = [801, 802, 803];
await sql`select public.seed_tenant(801, 12), public.seed_tenant(802, 12), public.seed_tenant(803, 3)`;
await sql`create table public.fuzz_canary (id bigint primary key, tenant_id bigint not null,
  secret text not null)`;
await sql`insert into public.fuzz_canary
  select i, 801 + i % 3, format('canary %s; drop table users; --', i) from generate_series(1, 30) i`;
const [{ guarded }] = await sql<{ guarded: boolean }[]>`select exists (
  select from pitr.protected_tables where table_name = 'fuzz_canary') as guarded`;
assert.ok(guarded, "the canary must be a protected table");
const beforeCapture = await now();
for (
  const { name } of await sql<{ name: string }[]>`
  select format('%s.%s', table_schema, table_name) as name from pitr.protected_tables`
) {
  await sql`select pitr.capture_enable(${name})`;
}

const digests = async () =>
  Object.fromEntries(
    await Promise.all(
      TENANTS.map(async (t) =>
        [
          t,
          (await sql<{ d: string }[]>`select public.tenant_digest(${t}) as d`)[0].d,
        ] as const
      ),
    ),
  );
const canary = async () =>
  (await sql<{ d: string }[]>`
    select count(*) || ':' || md5(string_agg(c::text, ',' order by id)) as d
    from public.fuzz_canary c`)[0].d;

// Ids the fuzzer may use as they are. Every snapshot is of the tenant's current state and every
// moment lies after the last change, so a restore the fuzzer legitimately runs changes no rows.
const fetchJson = async (path: string, init: RequestInit) => {
  const res = await fetch(`${base}/functions/v1/${path}`, {
    ...init,
    headers: { authorization: `Bearer ${TOKENS.service}`, "content-type": "application/json" },
  });
  // deno-lint-ignore no-explicit-any
  return await res.json() as any;
};
const snapshotIds: string[] = [];
for (
  const body of [
    { tenant_id: "801" },
    { tenant_id: 802 },
    { tenant_id: "803" },
    { tenant_id: "801", tables: ["lessons", "fuzz_canary", "crm.contacts"] },
  ]
) {
  snapshotIds.push(
    (await fetchJson("pitr-snapshot", {
      method: "POST",
      body: JSON.stringify(body),
    })).snapshot_id,
  );
}
const afterSeed = await now();
const rollbackIds: string[] = [];
for (const snapshot_id of snapshotIds.slice(0, 2)) {
  rollbackIds.push(
    (await fetchJson("pitr-execute?wait=true", {
      method: "POST",
      body: JSON.stringify({ snapshot_id }),
    })).rollback_id,
  );
}
const initial = { digests: await digests(), canary: await canary() };

// ---- Arbitraries ----

const anyJson = fc.jsonValue({ maxDepth: 3 });
const lone = fc.constantFrom("\ud800", "\udfff", "a\udc00b");
const nasty = fc.constantFrom(
  '"',
  "'",
  ";",
  "--",
  "/*",
  "\\",
  "\u0000",
  "\n",
  "%",
  "%00",
  "$1",
  "${x}",
  " ",
  ".",
  "é",
  "ß",
  "😀",
  "\u202e",
  "null",
  "users",
  "public",
  "drop table public.fuzz_canary",
  "' or '1'='1",
);
const hostileString = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.string({ unit: "binary", maxLength: 30 }),
  fc.string({ unit: fc.oneof(nasty, lone, fc.string({ maxLength: 3 })), maxLength: 12 }),
  fc.integer({ min: 200, max: 20_000 }).map((n) => "x".repeat(n)),
  fc.string({ unit: "grapheme", minLength: 100, maxLength: 400 }),
);
const tableName = fc.oneof(
  fc.constantFrom(
    "users",
    "public.users",
    "lessons",
    "crm.contacts",
    "fuzz_canary",
    "public.fuzz_canary",
    "Audit Log",
    'public."Audit Log"',
    "scratch",
    "pg_catalog.pg_authid",
    "public.backup_snapshots",
    "pitr.changes",
    "users; drop table users",
    'users"; drop table public.fuzz_canary; --',
  ),
  hostileString,
  fc.tuple(hostileString, hostileString).map(([a, b]) => `${a}.${b}`),
);
const tenantId = fc.oneof(
  fc.constantFrom("801", "802", "803", 801, 802, "999", " 801 ", "801 ", "0", "-1"),
  fc.integer(),
  fc.double(),
  fc.constantFrom(Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 2, 1e300, -0),
  hostileString,
  anyJson,
);
const isoMoment = fc.date({
  min: new Date("0001-01-01T00:00:00Z"),
  max: new Date("9999-12-31T23:59:59Z"),
  noInvalidDate: true,
}).map((d) => d.toISOString());
const moment = fc.oneof(
  fc.constantFrom(afterSeed, beforeCapture, afterSeed.replace("Z", "+00:00")),
  isoMoment,
  fc.tuple(
    fc.integer({ min: 0, max: 9999 }),
    fc.integer({ min: 0, max: 19 }),
    fc.integer({ min: 0, max: 39 }),
    fc.integer({ min: 0, max: 29 }),
    fc.integer({ min: 0, max: 69 }),
    fc.constantFrom("Z", "+00:00", "-23:59", "+99:99", "", "+0530", " UTC"),
  ).map(([y, mo, d, h, mi, z]) => {
    const p = (n: number, w = 2) => String(n).padStart(w, "0");
    return `${p(y, 4)}-${p(mo)}-${p(d)}T${p(h)}:${p(mi)}:${p(mi)}.${p(mi * 9999, 6)}${z}`;
  }),
  hostileString,
  anyJson,
);
const uuidish = (known: string[]) =>
  fc.oneof(fc.constantFrom(...known), fc.uuid(), hostileString, anyJson);

/** Mostly a value the API accepts, so that calls get past parsing; sometimes a hostile one. */
const mostly = <T, U>(good: fc.Arbitrary<T>, bad: fc.Arbitrary<U>) =>
  fc.oneof({ weight: 3, arbitrary: good }, { weight: 1, arbitrary: bad });
const goodTenant = fc.constantFrom("801", "802", "803", 801, 802);
const goodTables = fc.array(
  fc.constantFrom("users", "lessons", "public.lessons", "crm.contacts", "fuzz_canary", "teams"),
  { minLength: 1, maxLength: 3 },
);
const v = {
  snapshot_id: mostly(fc.constantFrom(...snapshotIds), uuidish(snapshotIds)),
  rollback_id: mostly(fc.constantFrom(...rollbackIds), uuidish(rollbackIds)),
  tenant_id: mostly(goodTenant, tenantId),
  at: mostly(fc.constantFrom(afterSeed, beforeCapture, afterSeed.replace("Z", "+00:00")), moment),
  tables: mostly(goodTables, fc.oneof(fc.array(tableName, { maxLength: 4 }), anyJson)),
  strategy: mostly(fc.constantFrom("overwrite", "merge"), fc.oneof(hostileString, anyJson)),
  label: mostly(fc.string({ maxLength: 20 }), fc.oneof(hostileString, fc.constant(null), anyJson)),
  table: mostly(
    fc.constantFrom("users", "lessons", "public.enrollments", "crm.contacts"),
    fc.oneof(tableName, anyJson),
  ),
  change: mostly(fc.constantFrom("insert", "update", "delete"), fc.oneof(hostileString, anyJson)),
  cursor: fc.oneof(hostileString, fc.base64String({ maxLength: 40 }), anyJson),
  allow_empty: mostly(fc.boolean(), anyJson),
  // Valid for the status list (1-100) and for a diff page (1-1000) alike.
  limit: mostly(fc.integer({ min: 1, max: 100 }), fc.oneof(fc.integer(), hostileString, anyJson)),
  // Small, so that a fleet drill call stays short.
  budget_s: mostly(
    fc.double({ min: 0.001, max: 2, noNaN: true }),
    fc.oneof(fc.double(), hostileString, anyJson),
  ),
};
type Field = keyof typeof v;
const shaped = (required: Field[], optional: Field[]) =>
  fc.record(
    Object.fromEntries([...required, ...optional].map((k) => [k, v[k]])),
    { requiredKeys: required },
  );
/** The body forms each endpoint takes, with values mostly accepted. */
const SHAPES: Record<string, fc.Arbitrary<Record<string, unknown>>[]> = {
  "POST pitr-snapshot": [shaped(["tenant_id"], ["tables", "label", "allow_empty"])],
  "POST pitr-validate": [
    shaped(["snapshot_id"], ["tables"]),
    shaped(["tenant_id", "at"], ["tables"]),
  ],
  "POST pitr-plan": [
    shaped(["snapshot_id"], ["tables", "strategy"]),
    shaped(["tenant_id", "at"], ["tables", "strategy"]),
  ],
  "POST pitr-execute": [
    shaped(["snapshot_id"], ["tables", "strategy"]),
    shaped(["tenant_id", "at"], ["tables", "strategy"]),
  ],
  "POST pitr-drill": [shaped([], ["tenant_id"]), shaped([], ["budget_s"])],
  "POST pitr-diff": [
    shaped(["snapshot_id", "table"], ["change", "limit", "cursor"]),
    shaped(["tenant_id", "at", "table"], ["change", "limit"]),
  ],
  "POST pitr-execute/cancel": [shaped(["rollback_id"], [])],
};
/** Any subset of every field the API knows, hostile values, extra keys, not JSON at all. */
const anyFields = fc.record(v, { requiredKeys: [] });
const hostileBody = fc.oneof(
  { weight: 3, arbitrary: anyFields.map((b) => JSON.stringify(b)) },
  {
    weight: 1,
    arbitrary: fc.tuple(anyFields, fc.dictionary(hostileString, anyJson, { maxKeys: 3 }))
      .map(([b, extra]) => JSON.stringify({ ...extra, ...b })),
  },
  { weight: 1, arbitrary: anyJson.map((x) => JSON.stringify(x)) },
  { weight: 1, arbitrary: hostileString },
  { weight: 1, arbitrary: fc.constant(undefined) },
);
const bodyFor = (key: string) =>
  SHAPES[key]
    ? fc.oneof(
      { weight: 3, arbitrary: fc.oneof(...SHAPES[key]).map((b) => JSON.stringify(b)) },
      { weight: 1, arbitrary: hostileBody },
    )
    : hostileBody;
/** The query each GET or DELETE takes, or a random one. */
const QUERIES: Record<string, fc.Arbitrary<Record<string, string>>> = {
  "GET pitr-snapshot": fc.record({ tenant_id: v.tenant_id.map(String) }),
  "GET pitr-status": fc.oneof(
    fc.record({ rollback_id: v.rollback_id.map(String) }),
    fc.record({ tenant_id: v.tenant_id.map(String), limit: v.limit.map(String) }, {
      requiredKeys: ["tenant_id"],
    }),
  ),
  "DELETE pitr-execute": fc.record({ rollback_id: v.rollback_id.map(String) }),
  "GET pitr-drill": fc.record({ tenant_id: v.tenant_id.map(String), limit: v.limit.map(String) }, {
    requiredKeys: [],
  }),
  "POST pitr-execute": fc.record({ wait: fc.constantFrom("true", "false") }, { requiredKeys: [] }),
};
const hostileQuery = fc.oneof(
  fc.record({
    tenant_id: tenantId.map(String),
    rollback_id: uuidish(rollbackIds).map(String),
    wait: fc.constantFrom("true", "false", "yes", ""),
    limit: v.limit.map(String),
    forceFunctionRegion: fc.constant("eu-west-1"),
  }, { requiredKeys: [] }).map((q) => new URLSearchParams(q).toString()),
  fc.array(fc.tuple(hostileString, hostileString), { maxLength: 3 })
    .map((pairs) => new URLSearchParams(pairs).toString()),
  hostileString,
);
const queryFor = (key: string) =>
  fc.oneof(
    {
      weight: 3,
      arbitrary: QUERIES[key]
        ? QUERIES[key].map((q) => new URLSearchParams(q).toString())
        : fc.constant(undefined),
    },
    { weight: 1, arbitrary: fc.option(hostileQuery, { nil: undefined }) },
  );
const ENDPOINTS = [
  ["POST", "pitr-snapshot"],
  ["GET", "pitr-snapshot"],
  ["POST", "pitr-validate"],
  ["POST", "pitr-plan"],
  ["POST", "pitr-execute"],
  ["GET", "pitr-status"],
  ["POST", "pitr-drill"],
  ["GET", "pitr-drill"],
  ["POST", "pitr-diff"],
  ["POST", "pitr-execute/cancel"],
  ["DELETE", "pitr-execute"],
  ["GET", "openapi.json"],
] as const;
const endpoint = fc.oneof(
  { weight: 12, arbitrary: fc.constantFrom(...ENDPOINTS) },
  {
    weight: 1,
    arbitrary: fc.tuple(
      fc.constantFrom("GET", "POST", "PUT", "PATCH", "DELETE"),
      fc.oneof(fc.constantFrom(...ENDPOINTS.map(([, p]) => p)), fc.webSegment()),
    ),
  },
);
const bearer = fc.oneof(
  // The service role and the tenant's admin reach deepest; the others mostly meet 403.
  { weight: 4, arbitrary: fc.constantFrom(TOKENS.service, TOKENS.admin801) },
  { weight: 4, arbitrary: fc.constantFrom(...Object.values(TOKENS)) },
  {
    weight: 1,
    arbitrary: fc.constantFrom<string | undefined>(
      undefined,
      "garbage",
      "a.b.c",
      TOKENS.service + "x",
    ),
  },
);
// Header values must be visible ASCII; fetch refuses anything else before it is sent.
const visible = fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c));
const idempotencyKey = fc.oneof(
  { weight: 3, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.string({ unit: visible, maxLength: 40 }) },
  // Long and random, so that PostgreSQL cannot compress it below its index row limit.
  { weight: 1, arbitrary: fc.string({ unit: visible, minLength: 200, maxLength: 6000 }) },
);
const request = endpoint.chain(([method, name]) =>
  fc.record({
    endpoint: fc.constant([method, name] as const),
    withPrefix: fc.boolean(),
    query: queryFor(`${method} ${name}`),
    body: bodyFor(`${method} ${name}`),
    bearer,
    idempotencyKey,
  })
);
type Request = typeof request extends fc.Arbitrary<infer R> ? R : never;

// ---- Checking an answer against the contract ----

type Schema = Record<string, unknown>;
function resolve(s: Schema): Schema {
  let out = s;
  while (typeof out.$ref === "string") {
    out = (out.$ref as string).split("/").slice(1).reduce(
      // deno-lint-ignore no-explicit-any
      (o: any, k) => o[k],
      openapi,
    ) as Schema;
  }
  return out;
}
/** The problems of `value` against an OpenAPI schema (the subset the contract uses). */
function problems(value: unknown, schema: Schema, at = "$"): string[] {
  const s = resolve(schema);
  if (s.oneOf) {
    const each = (s.oneOf as Schema[]).map((o) => problems(value, o, at));
    return each.filter((p) => p.length === 0).length === 1
      ? []
      : [`${at}: matches ${each.filter((p) => p.length === 0).length} of oneOf`];
  }
  if (s.allOf) return (s.allOf as Schema[]).flatMap((o) => problems(value, o, at));
  const out: string[] = [];
  if (s.type) {
    const types = Array.isArray(s.type) ? s.type : [s.type];
    const actual = value === null
      ? "null"
      : Array.isArray(value)
      ? "array"
      : Number.isInteger(value)
      ? "integer"
      : typeof value;
    const fits = types.some((t) => t === actual || (t === "number" && actual === "integer"));
    if (!fits) return [`${at}: ${actual} is not ${types.join("|")}`];
  }
  if (s.enum && !(s.enum as unknown[]).includes(value)) out.push(`${at}: not in enum`);
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const o = value as Record<string, unknown>;
    for (const k of (s.required as string[] | undefined) ?? []) {
      if (!(k in o)) out.push(`${at}.${k}: missing`);
    }
    const props = (s.properties ?? {}) as Record<string, Schema>;
    for (const [k, v] of Object.entries(o)) {
      if (props[k]) out.push(...problems(v, props[k], `${at}.${k}`));
      else if (s.additionalProperties === false) out.push(`${at}.${k}: not in the contract`);
    }
  }
  if (Array.isArray(value) && s.items) {
    value.forEach((v, i) => out.push(...problems(v, s.items as Schema, `${at}[${i}]`)));
  }
  return out;
}

// A 409 restore_in_progress also names the restore in progress.
const isErrorShape = (b: unknown) => {
  const e = (b as { error?: Record<string, unknown> })?.error;
  const keys = e?.code === "restore_in_progress" ? "code,message,rollback_id" : "code,message";
  return !!e && Object.keys(b as object).length === 1 && Object.keys(e).sort().join() === keys &&
    typeof e.code === "string" && e.code.length > 0 && typeof e.message === "string";
};

// The server's own log of internal errors, to show next to a 5xx.
const serverLog: string[] = [];
const logError = console.error;
console.error = (...args: unknown[]) => {
  serverLog.push(args.map(String).join(" "));
  logError(...args);
};

let answered = 0;
const statuses = new Map<number, number>();

async function send(r: Request) {
  const [method, name] = r.endpoint;
  const url = `${base}${r.withPrefix ? "/functions/v1" : ""}/${name}` +
    (r.query === undefined ? "" : `?${r.query}`);
  const headers: Record<string, string> = {};
  if (r.bearer !== undefined) headers.authorization = `Bearer ${r.bearer}`;
  if (r.idempotencyKey !== undefined) headers["idempotency-key"] = r.idempotencyKey;
  const sendBody = r.body !== undefined && method !== "GET";
  if (sendBody) headers["content-type"] = "application/json";
  const logged = serverLog.length;
  const res = await fetch(url, { method, headers, body: sendBody ? r.body : undefined });
  const text = await res.text();
  answered++;
  statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
  const show = () =>
    `${method} ${url}\nbody: ${r.body}\n→ ${res.status} ${text.slice(0, 500)}\nserver log: ${
      serverLog.slice(logged).join("\n") || "(none)"
    }`;
  assert.ok(res.status < 500, `a ${res.status}:\n${show()}`);
  assert.equal(res.headers.get("content-type")?.split(";")[0], "application/json", show());
  const json = JSON.parse(text);
  if (res.status >= 400) {
    assert.ok(res.status < 500 && isErrorShape(json), `not the error shape:\n${show()}`);
    return;
  }
  assert.ok(res.status >= 200 && res.status < 300, show());
  if (name === "openapi.json") return;
  const operation = // deno-lint-ignore no-explicit-any
    (openapi.paths as any)[`/functions/v1/${name}`]?.[method.toLowerCase()];
  assert.ok(operation, `a success from an undocumented operation:\n${show()}`);
  const response = operation.responses[String(res.status)];
  assert.ok(response, `status ${res.status} is not documented for ${method} ${name}:\n${show()}`);
  const schema = response.content?.["application/json"]?.schema;
  const wrong = problems(json, schema);
  assert.deepEqual(
    wrong,
    [],
    `the answer does not fit the contract: ${wrong.join("; ")}\n${show()}`,
  );
}

dbTest(
  `random requests to every endpoint answer 2xx per contract or 4xx with the error shape (seed ${SEED}, ${RUNS} runs)`,
  async () => {
    await fc.assert(fc.asyncProperty(request, send), {
      seed: SEED,
      numRuns: RUNS,
    });
    console.log(
      `${answered} answers: ${
        [...statuses].sort(([a], [b]) => a - b).map(([s, n]) => `${s}×${n}`).join(" ")
      }`,
    );
  },
);

dbTest("the canary table and every tenant's rows are unchanged by all of it", async () => {
  while (background.length) await Promise.all(background.splice(0));
  assert.deepEqual(await digests(), initial.digests);
  assert.equal(await canary(), initial.canary);
});

dbTest("stop the server", async () => {
  console.error = logError;
  while (background.length) await Promise.all(background.splice(0));
  await server.shutdown();
});

cleanup(db);
