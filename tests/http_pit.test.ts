// Point in time over HTTP, through a real socket: plan, validate and execute take
// `{tenant_id, at}` wherever they take `snapshot_id`. Changes are made at moments read from the
// database's clock; each restore to a moment must give exactly the tenant digest recorded then.
import assert from "node:assert/strict";
import { cleanup, clearMoment, dbTest, tenantDigest, testDatabase } from "./_db.ts";
import { serveTestApp, token, userToken } from "./_http.ts";

const db = await testDatabase("http_pit");
const sql = db.sql;

const user = userToken;
const service = await token({ role: "service_role" });
const admin701 = await user("701", "admin");
const viewer701 = await user("701", "viewer");
const admin702 = await user("702", "admin");

const { server, background, origin } = serveTestApp(sql);
const base = `${origin}/functions/v1`;

interface Answer {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
}
async function call(
  method: "GET" | "POST",
  path: string,
  body?: unknown,
  options: { bearer?: string; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const res = await fetch(`${base}/${path}`, {
    method,
    headers: {
      authorization: `Bearer ${options.bearer ?? service}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...options.headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));
const digest = (t: number) => tenantDigest(sql, t);
const snapshotCount = async () =>
  Number((await sql<{ n: string }[]>`select count(*) as n from public.backup_snapshots`)[0].n);
const now = () => clearMoment(sql);
async function pollUntilDone(id: string) {
  for (;;) {
    const r = await call("GET", `pitr-status?rollback_id=${id}`);
    assert.equal(r.status, 200);
    if (r.body.status !== "pending" && r.body.status !== "running") return r.body;
    await sleep(20);
  }
}

await sql`select public.seed_tenant(701, 20), public.seed_tenant(702, 20)`;
const beforeCapture = await now();
for (
  const { name } of await sql<{ name: string }[]>`
  select format('%s.%s', table_schema, table_name) as name from pitr.protected_tables`
) {
  await sql`select pitr.capture_enable(${name})`;
}

const moments: { at: string; digest: string }[] = [];
const mark = async () => moments.push({ at: await now(), digest: await digest(701) });

await mark(); // 0: as seeded
await sql`update public.lessons set body = body || ' v2' where tenant_id = 701`;
await sql`update public.users set display_name = 'first edit' where tenant_id = 701 and email like 'u1%'`;
await mark(); // 1
await sql`delete from public.users where tenant_id = 701 and email in ('u1@t701.example', 'u2@t701.example')`; // cascades
await sql`update public.lessons set body = body || ' v3' where tenant_id = 701`;
await sql`update public.users set display_name = 'other tenant' where tenant_id = 702`;
await mark(); // 2
await sql`update public.campaigns set title = 'bad import', budget = null where tenant_id = 701`;
await sql`delete from crm.contacts where org = '701'`;
await sql`insert into public.lessons (tenant_id, body) values (701, 'intruder')`;
await mark(); // 3

dbTest(
  "plan with {tenant_id, at} counts the changes, answers snapshot_id null and at, and changes nothing",
  async () => {
    const before = await digest(701);
    const snapshots = await snapshotCount();
    const r = await call("POST", "pitr-plan", { tenant_id: "701", at: moments[1].at }, {
      bearer: viewer701,
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.snapshot_id, null);
    assert.equal(r.body.at, moments[1].at);
    assert.equal(r.body.tenant_id, "701");
    assert.equal(r.body.strategy, "overwrite");
    assert.deepEqual(Object.keys(r.body).sort(), [
      "at",
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
    const contacts = r.body.tables.find((t: { table: string }) => t.table === "crm.contacts");
    assert.equal(contacts.insert, 2);
    const lessons = r.body.tables.find((t: { table: string }) => t.table === "public.lessons");
    assert.deepEqual({ ...lessons }, {
      table: "public.lessons",
      insert: 0,
      update: 5,
      delete: 1,
      unchanged: 0,
    });
    const partial = await call("POST", "pitr-plan", {
      tenant_id: 701,
      at: moments[1].at,
      tables: ["lessons"],
      strategy: "merge",
    });
    assert.equal(partial.status, 200, JSON.stringify(partial.body));
    assert.deepEqual(partial.body.tables.map((t: { table: string }) => t.table), [
      "public.lessons",
    ]);
    assert.equal(partial.body.strategy, "merge");
    assert.equal(await digest(701), before);
    assert.equal(await snapshotCount(), snapshots);
  },
);

dbTest(
  "validate with {tenant_id, at}: valid inside the log, not valid before capture began",
  async () => {
    const ok = await call("POST", "pitr-validate", { tenant_id: "701", at: moments[0].at }, {
      bearer: viewer701,
    });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.equal(ok.body.valid, true);
    assert.equal(ok.body.snapshot_id, null);
    assert.equal(ok.body.at, moments[0].at);
    // One change_log check per table, then the rows at that moment against today's constraints.
    const kinds = new Set(ok.body.checks.map((c: { check: string }) => c.check));
    assert.deepEqual([...kinds], ["change_log", "constraints", "keys"]);
    assert.ok(ok.body.checks.every((c: { ok: boolean }) => c.ok));
    const early = await call("POST", "pitr-validate", {
      tenant_id: "701",
      at: beforeCapture,
      tables: ["lessons"],
    });
    assert.equal(early.status, 200);
    assert.equal(early.body.valid, false);
    assert.deepEqual(early.body.checks.map((c: { table: string }) => c.table), ["public.lessons"]);
    assert.match(early.body.checks[0].message, /captured only since/);
  },
);

dbTest(
  "execute with {tenant_id, at} restores each moment's exact digest; the other tenant is untouched",
  async () => {
    const other = await digest(702);
    for (const i of [1, 0, 3, 2]) {
      const r = await call("POST", "pitr-execute?wait=true", {
        tenant_id: "701",
        at: moments[i].at,
      }, {
        bearer: admin701,
      });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.status, "completed", `moment ${i}: ${JSON.stringify(r.body.error)}`);
      assert.equal(await digest(701), moments[i].digest, `moment ${i}`);
      assert.equal(await digest(702), other, `tenant 702 after moment ${i}`);
    }
    // In the background (202), and the snapshot it restored from is kept, of kind point_in_time.
    const started = await call("POST", "pitr-execute", { tenant_id: 701, at: moments[0].at });
    assert.equal(started.status, 202, JSON.stringify(started.body));
    await Promise.all(background.splice(0));
    const final = await pollUntilDone(started.body.rollback_id);
    assert.equal(final.status, "completed", JSON.stringify(final.error));
    assert.equal(await digest(701), moments[0].digest);
    const list = await call("GET", "pitr-snapshot?tenant_id=701");
    const used = list.body.snapshots.find((s: { snapshot_id: string }) =>
      s.snapshot_id === final.snapshot_id
    );
    assert.equal(used.kind, "point_in_time");
    // Undo: the restore's undo snapshot puts the tenant back as it was at moment 2.
    const undo = await call("POST", "pitr-execute?wait=true", {
      snapshot_id: final.undo_snapshot_id,
    });
    assert.equal(undo.body.status, "completed");
    assert.equal(await digest(701), moments[2].digest);
    assert.equal(await digest(702), other);
  },
);

dbTest(
  "an Idempotency-Key with {tenant_id, at} replays the first restore; another moment is 409",
  async () => {
    const headers = { "idempotency-key": "pit-key-1" };
    const body = { tenant_id: "701", at: moments[3].at };
    const first = await call("POST", "pitr-execute?wait=true", body, { headers });
    assert.equal(first.body.status, "completed");
    const again = await call("POST", "pitr-execute", body, { headers });
    assert.equal(again.status, 202);
    assert.equal(again.body.rollback_id, first.body.rollback_id);
    const clash = await call("POST", "pitr-execute", { ...body, at: moments[2].at }, { headers });
    assert.equal(clash.status, 409);
    assert.equal(clash.body.error.code, "idempotency_key_reused");
    // A key is an id, not a document: a long one is refused before anything is built.
    const snapshots = await snapshotCount();
    const long = await call("POST", "pitr-execute", body, {
      headers: { "idempotency-key": Array.from({ length: 300 }, (_, i) => i % 10).join("") },
    });
    assert.equal(long.status, 400);
    assert.match(long.body.error.message, /^idempotency-key:/);
    assert.equal(await snapshotCount(), snapshots);
    assert.equal(await digest(701), moments[3].digest);
  },
);

dbTest(
  "exactly one form: both, neither or half of {tenant_id, at} is 400; bad moments 400 and 422",
  async () => {
    const before = await digest(701);
    const history = async () =>
      Number(
        (await sql<{ n: string }[]>`select count(*) as n
        from public.backup_pitr_rollback_history`)[0].n,
      );
    const rows = await history();
    const snapshots = await snapshotCount();
    const { snapshot_id } = (await call("POST", "pitr-snapshot", { tenant_id: "701" })).body;
    const at = moments[0].at;
    const bad: [unknown, string, RegExp][] = [
      [{ snapshot_id, tenant_id: "701", at }, "invalid_request", /not both/],
      [{ snapshot_id, at }, "invalid_request", /not both/],
      [{}, "invalid_request", /required/],
      [{ at }, "invalid_request", /tenant_id: required with at/],
      [{ tenant_id: "701" }, "invalid_request", /at: required with tenant_id/],
      [{ tenant_id: "701", at: 1700000000 }, "invalid_request", /^at:/],
      [{ tenant_id: "701", at: "" }, "invalid_request", /^at:/],
      [{ tenant_id: "701", at: "yesterday" }, "invalid_request", /ISO 8601/],
      [{ tenant_id: "701", at: "2026-01-01 10:00:00" }, "invalid_request", /ISO 8601/],
      [{ tenant_id: "701", at: "2999-01-01T00:00:00Z" }, "invalid_request", /future/],
      // Read alike by JavaScript and PostgreSQL, or refused: never March 1st, never a 500.
      [{ tenant_id: "701", at: "2026-02-30T00:00:00Z" }, "invalid_request", /real date/],
      [{ tenant_id: "701", at: "2026-01-01T24:00:00Z" }, "invalid_request", /real date/],
      [{ tenant_id: "701", at: "0000-01-01T00:00:00Z" }, "invalid_request", /real date/],
      [{ tenant_id: "701", at: "9999-12-31T23:59:59-23:59" }, "invalid_request", /real date/],
      [{ tenant_id: "701", at: "2026-01-01T00:00:00+24:00" }, "invalid_request", /real date/],
      [{ tenant_id: "701", at, tables: ["scratch"] }, "unknown_table", /scratch/],
      [{ tenant_id: "701", at, when: "now" }, "invalid_request", /unknown field when/],
    ];
    for (const name of ["pitr-plan", "pitr-validate", "pitr-execute"]) {
      for (const [body, code, message] of bad) {
        const r = await call("POST", name, body);
        assert.equal(r.status, 400, `${name} ${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.error.code, code, `${name} ${JSON.stringify(body)}`);
        assert.match(r.body.error.message, message, `${name} ${JSON.stringify(body)}`);
      }
    }
    // Before capture began: the log cannot rebuild the tenant then.
    for (const name of ["pitr-plan", "pitr-execute"]) {
      const r = await call("POST", name, { tenant_id: "701", at: beforeCapture });
      assert.equal(r.status, 422, JSON.stringify(r.body));
      assert.equal(r.body.error.code, "no_change_log");
    }
    // Before the retention window: the log's old days were dropped.
    const [{ since }] = await sql<{ since: string }[]>`
      select complete_since::text as since from pitr.settings`;
    await sql`update pitr.settings set complete_since = ${moments[1].at}::text::timestamptz`;
    try {
      for (const name of ["pitr-plan", "pitr-validate", "pitr-execute"]) {
        const r = await call("POST", name, { tenant_id: "701", at: moments[0].at });
        assert.equal(r.status, 422, `${name}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.error.code, "outside_retention");
      }
    } finally {
      await sql`update pitr.settings set complete_since = ${since}::text::timestamptz`;
    }
    assert.equal(await history(), rows);
    assert.equal(await snapshotCount(), snapshots + 1);
    assert.equal(await digest(701), before);
  },
);

dbTest(
  "with {tenant_id, at} the token's tenant decides: a viewer plans but may not execute, another tenant's admin is 403",
  async () => {
    const before = await digest(701);
    const snapshots = await snapshotCount();
    const at = moments[1].at;
    const viewer = await call("POST", "pitr-execute", { tenant_id: "701", at }, {
      bearer: viewer701,
    });
    assert.equal(viewer.status, 403);
    assert.equal(viewer.body.error.code, "forbidden");
    for (const name of ["pitr-plan", "pitr-validate", "pitr-execute"]) {
      const r = await call("POST", name, { tenant_id: "701", at }, { bearer: admin702 });
      assert.equal(r.status, 403, name);
      assert.equal(r.body.error.code, "forbidden_tenant");
    }
    assert.equal(await snapshotCount(), snapshots);
    assert.equal(await digest(701), before);
    const own = await call("POST", "pitr-execute?wait=true", { tenant_id: "701", at }, {
      bearer: admin701,
    });
    assert.equal(own.body.status, "completed", JSON.stringify(own.body.error));
    assert.equal(await digest(701), moments[1].digest);
  },
);

dbTest(
  "a moment before a column's type changed is 422 naming the table and the DDL; before a column was added, it plans",
  async () => {
    await sql`create table public.pit_http_ddl (id int primary key, tenant_id bigint, v text)`;
    await sql`select pitr.capture_enable('public.pit_http_ddl')`;
    await sql`insert into public.pit_http_ddl values (1, 701, 'a'), (2, 701, 'b')`;
    const at = await now();
    await sql`alter table public.pit_http_ddl add column added_later numeric(10, 2)`;
    await sql`update public.pit_http_ddl set added_later = 1, v = 'changed' where id = 1`;
    await sql`delete from public.pit_http_ddl where id = 2`;
    const body = { tenant_id: "701", at, tables: ["pit_http_ddl"] };
    const plan = await call("POST", "pitr-plan", body, { bearer: admin701 });
    assert.equal(plan.status, 200, JSON.stringify(plan.body));
    assert.deepEqual(plan.body.totals, { insert: 1, update: 1, delete: 0, unchanged: 0 });

    await sql`alter table public.pit_http_ddl alter column v type varchar(20)`;
    const before = await digest(701);
    const snapshots = await snapshotCount();
    for (const name of ["pitr-plan", "pitr-execute"]) {
      const r = await call("POST", name, body, { bearer: admin701 });
      assert.equal(r.status, 422, `${name}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, "schema_incompatible");
      assert.match(
        r.body.error.message,
        /public\.pit_http_ddl was altered after that moment, at .*\(ALTER TABLE public\.pit_http_ddl: column v changed from text to character varying\(20\)\)/,
      );
    }
    assert.equal(await snapshotCount(), snapshots);
    assert.equal(await digest(701), before);
    await sql`drop table public.pit_http_ddl`;
  },
);

dbTest("stop the server", async () => {
  await Promise.all(background.splice(0));
  await server.shutdown();
});

cleanup(db);
