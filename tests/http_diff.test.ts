// pitr-diff over a real socket (fetch and supabase-js): every page of a table's row-level
// difference, walked with its cursor, equals a difference computed independently from rows
// recorded when the snapshot was taken and the rows now.
import assert from "node:assert/strict";
import { createClient } from "@supabase/supabase-js";
import { cleanup, clearMoment, dbTest, testDatabase } from "./_db.ts";
import { serveTestApp, token, userToken } from "./_http.ts";

const db = await testDatabase("http_diff");
const sql = db.sql;
const { server, origin } = serveTestApp(sql);
const service = await token({ role: "service_role" });

await sql`select public.seed_tenant(701, 30), public.seed_tenant(702, 30)`;
await sql`create table public.page_views (tenant_id bigint not null, path text, hits int)`;
await sql`insert into public.page_views values (701, '/a', 1), (701, '/a', 1), (701, '/b', 2),
  (702, '/a', 1)`;

type Row = Record<string, unknown>;
/** The table's rows of tenant 701 now, by key, as to_jsonb renders them (pinned time zone). */
async function rowsOf(table: string, key: string[]): Promise<Map<string, Row>> {
  const rows = await sql.begin(async (tx) => {
    await tx`set local timezone = 'UTC'`;
    return await tx<{ r: Row }[]>`select to_jsonb(x) as r from ${sql(table)} x
      where tenant_id = 701`;
  });
  return new Map(rows.map(({ r }) => [JSON.stringify(key.map((k) => r[k])), r]));
}

async function call(body: unknown, bearer = service) {
  const res = await fetch(`${origin}/functions/v1/pitr-diff`, {
    method: "POST",
    headers: { authorization: `Bearer ${bearer}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

const snapshotRes = await fetch(`${origin}/functions/v1/pitr-snapshot`, {
  method: "POST",
  headers: { authorization: `Bearer ${service}`, "content-type": "application/json" },
  body: JSON.stringify({ tenant_id: "701" }),
});
const snapshotId = (await snapshotRes.json()).snapshot_id as string;
const usersThen = await rowsOf("public.users", ["id"]);
const enrollmentsThen = await rowsOf("public.enrollments", ["campaign_id", "user_id"]);

// Damage: updates of some columns, deletes (cascading into enrollments), inserts.
await sql`update public.users set display_name = 'edited', profile = '{"x": 1}'
  where tenant_id = 701 and email like 'u1%'`;
await sql`update public.users set tags = '{z}' where tenant_id = 701 and email like 'u2%'`;
await sql`delete from public.users where tenant_id = 701 and email like 'u3%'`;
await sql`insert into public.users (tenant_id, email) values (701, 'new1@x'), (701, 'new2@x')`;
await sql`update public.enrollments set score = -1 where tenant_id = 701 and score > 0.5`;
await sql`delete from public.page_views where tenant_id = 701 and path = '/b'`;
await sql`insert into public.page_views values (701, '/a', 1), (701, '/c', 3)`;

/** The difference computed here, independently of the engine. */
function expectedDiff(then: Map<string, Row>, now: Map<string, Row>) {
  const out = new Map<string, { change: string; columns: string[] }>();
  for (const [k, r] of then) {
    const l = now.get(k);
    if (!l) out.set(k, { change: "insert", columns: [] });
    else {
      const columns = Object.keys(r).filter((c) => JSON.stringify(r[c]) !== JSON.stringify(l[c]));
      if (columns.length) out.set(k, { change: "update", columns: columns.sort() });
    }
  }
  for (const k of now.keys()) if (!then.has(k)) out.set(k, { change: "delete", columns: [] });
  return out;
}

/** Walks every page of pitr-diff with the cursor. */
async function allPages(body: Record<string, unknown>, limit: number) {
  const rows: { key: Row; change: string; columns: string[]; snapshot: Row; live: Row }[] = [];
  let cursor: string | undefined;
  let pages = 0;
  for (;;) {
    const res = await call({ ...body, limit, ...(cursor ? { cursor } : {}) });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.ok(res.body.rows.length <= limit);
    rows.push(...res.body.rows);
    pages++;
    if (res.body.next_cursor === null) break;
    cursor = res.body.next_cursor;
  }
  return { rows, pages };
}

dbTest(
  "every page of users' diff, walked with the cursor, equals the diff computed independently",
  async () => {
    const expected = expectedDiff(usersThen, await rowsOf("public.users", ["id"]));
    const { rows, pages } = await allPages({ snapshot_id: snapshotId, table: "users" }, 4);
    assert.ok(pages > 2);
    const got = new Map(rows.map((r) => [JSON.stringify([r.key.id]), r]));
    assert.equal(got.size, rows.length, "no row twice");
    assert.deepEqual(
      [...got].map(([k, r]) => [k, r.change, [...r.columns].sort()]).sort(),
      [...expected].map(([k, e]) => [k, e.change, e.columns]).sort(),
    );
    // In key order, with both images where they exist.
    const ids = rows.map((r) => String(r.key.id));
    assert.deepEqual(ids, [...ids].sort());
    for (const r of rows) {
      const k = JSON.stringify([r.key.id]);
      if (r.change !== "delete") assert.deepEqual(r.snapshot, usersThen.get(k));
      else assert.equal(r.snapshot, null);
      if (r.change === "insert") assert.equal(r.live, null);
    }
  },
);

dbTest("a composite key pages the same way; change filters to one kind", async () => {
  const expected = expectedDiff(
    enrollmentsThen,
    await rowsOf("public.enrollments", ["campaign_id", "user_id"]),
  );
  const { rows } = await allPages({ snapshot_id: snapshotId, table: "public.enrollments" }, 3);
  assert.deepEqual(
    rows.map((r) => [JSON.stringify([r.key.campaign_id, r.key.user_id]), r.change]).sort(),
    [...expected].map(([k, e]) => [k, e.change]).sort(),
  );
  const updates = await allPages({
    snapshot_id: snapshotId,
    table: "public.enrollments",
    change: "update",
  }, 5);
  assert.ok(updates.rows.length > 0);
  assert.ok(updates.rows.every((r) => r.change === "update" && r.columns.includes("score")));
  assert.equal(
    updates.rows.length,
    [...expected.values()].filter((e) => e.change === "update").length,
  );
});

dbTest(
  "a table without a primary key: multiset inserts and deletes, opaque stable keys",
  async () => {
    const first = await allPages({ snapshot_id: snapshotId, table: "page_views" }, 1);
    const again = await allPages({ snapshot_id: snapshotId, table: "page_views" }, 10);
    assert.deepEqual(first.rows, again.rows);
    const summary = first.rows.map((r) => [r.change, (r.snapshot ?? r.live).path]).sort();
    // One of the two identical '/a' rows was there before; the third is extra. '/b' went, '/c' came.
    assert.deepEqual(summary, [["delete", "/a"], ["delete", "/c"], ["insert", "/b"]]);
    assert.ok(first.rows.every((r) => typeof r.key === "string"));
  },
);

dbTest(
  "bad cursors and limits are 400; a viewer reads, another tenant's admin gets 404 (ids never leak)",
  async () => {
    assert.equal(
      (await call({ snapshot_id: snapshotId, table: "users", cursor: "nope" })).status,
      400,
    );
    const forged = btoa(JSON.stringify(["not-a-uuid"]));
    const r = await call({ snapshot_id: snapshotId, table: "users", cursor: forged });
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, "invalid_cursor");
    assert.equal((await call({ snapshot_id: snapshotId, table: "users", limit: 0 })).status, 400);
    assert.equal(
      (await call({ snapshot_id: snapshotId, table: "users", limit: 1001 })).status,
      400,
    );
    assert.equal((await call({ snapshot_id: snapshotId, table: "nope" })).status, 400);
    assert.equal(
      (await call({ snapshot_id: snapshotId, table: "users" }, await userToken("701", "viewer")))
        .status,
      200,
    );
    assert.equal(
      (await call({ snapshot_id: snapshotId, table: "users" }, await userToken("702", "admin")))
        .status,
      404,
    );
  },
);

dbTest("supabase-js reads a page; a moment from the change log diffs like a snapshot", async () => {
  const supabase = createClient(origin, service, {
    auth: { persistSession: false, autoRefreshToken: false },
  });
  const { data, error } = await supabase.functions.invoke("pitr-diff", {
    body: { snapshot_id: snapshotId, table: "users", change: "delete" },
    headers: { Authorization: `Bearer ${service}` },
  });
  assert.equal(error, null);
  assert.equal(data.rows.length, 2);

  await sql`select pitr.capture_enable('public.lessons')`;
  const at = await clearMoment(sql);
  await sql`update public.lessons set body = 'later' where tenant_id = 701`;
  const [{ n }] = await sql<{ n: string }[]>`select count(*) as n from public.lessons
    where tenant_id = 701`;
  const res = await call({ tenant_id: "701", at, table: "lessons" });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  assert.equal(res.body.snapshot_id, null);
  assert.equal(res.body.rows.length, Number(n));
  assert.ok(
    res.body.rows.every((r: { change: string; columns: string[] }) =>
      r.change === "update" && r.columns.join() === "body"
    ),
  );
});

dbTest("cleanup: server", async () => {
  await server.shutdown();
});

cleanup(db);
