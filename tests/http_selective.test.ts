// Selective restore over a real socket: exactly the chosen rows come back to their state in the
// snapshot, every other row of the tenant stays as it was live; a choice that would break a key
// is refused naming the rows it lacks, or completed with them when asked.
import assert from "node:assert/strict";
import { createClient } from "@supabase/supabase-js";
import { cleanup, dbTest, testDatabase } from "./_db.ts";
import { serveTestApp, token } from "./_http.ts";

const db = await testDatabase("http_selective");
const sql = db.sql;
const { server, origin } = serveTestApp(sql);
const service = await token({ role: "service_role" });

async function call(name: string, body: unknown, query = "") {
  const res = await fetch(`${origin}/functions/v1/${name}${query}`, {
    method: "POST",
    headers: { authorization: `Bearer ${service}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

type Row = Record<string, unknown>;
/** A table's rows of tenant 711 by key, as text (exact), read with pinned settings. */
async function rows(table: string, key: string[]): Promise<Map<string, string>> {
  const r = await sql.begin(async (tx) => {
    await tx`set local timezone = 'UTC'`;
    return await tx<{ k: Row; t: string }[]>`
      select to_jsonb(x) as k, x::text as t from ${sql(table)} x where tenant_id = 711`;
  });
  return new Map(r.map(({ k, t }) => [JSON.stringify(key.map((c) => k[c])), t]));
}
const usersOf = () => rows("public.users", ["id"]);
const enrollmentsOf = () => rows("public.enrollments", ["campaign_id", "user_id"]);

await sql`select public.seed_tenant(711, 20), public.seed_tenant(712, 5)`;
const snapshotId = (await call("pitr-snapshot", { tenant_id: "711" })).body.snapshot_id as string;
const usersThen = await usersOf();
const enrollmentsThen = await enrollmentsOf();
const [u1, u2, u3] = await sql<{ id: string }[]>`
  select id from public.users where tenant_id = 711 and email like 'u%' order by email limit 3`;

// Damage: two users edited, one deleted (its enrollments cascade), one added.
await sql`update public.users set display_name = 'edited' where id in (${u1.id}, ${u2.id})`;
await sql`delete from public.users where id = ${u3.id}`;
await sql`insert into public.users (tenant_id, email) values (711, 'added@x')`;
const [added] = await sql<{ id: string }[]>`select id from public.users where email = 'added@x'`;
const usersBefore = await usersOf();
const enrollmentsBefore = await enrollmentsOf();
const otherTenant =
  await sql`select xmin::text, ctid::text from public.users where tenant_id = 712`;

dbTest(
  "exactly the chosen rows come back (an update undone, an added row deleted); every other row stays",
  async () => {
    const select = [{ table: "users", keys: [{ id: u1.id }, { id: added.id }, { id: u1.id }] }];
    const plan = await call("pitr-plan", {
      snapshot_id: snapshotId,
      strategy: "selective",
      select,
    });
    assert.equal(plan.status, 200, JSON.stringify(plan.body));
    const counts = plan.body.tables.find((t: { table: string }) => t.table === "public.users");
    assert.deepEqual([counts.insert, counts.update, counts.delete], [0, 1, 1]);
    assert.deepEqual(plan.body.dependencies_added, []);

    const run = await call(
      "pitr-execute",
      { snapshot_id: snapshotId, strategy: "selective", select },
      "?wait=true",
    );
    assert.equal(run.status, 200, JSON.stringify(run.body));
    assert.equal(run.body.status, "completed", JSON.stringify(run.body.error));
    assert.equal(run.body.strategy, "selective");

    const now = await usersOf();
    const k = (id: string) => JSON.stringify([id]);
    assert.equal(now.get(k(u1.id)), usersThen.get(k(u1.id)));
    assert.equal(now.has(k(added.id)), false);
    // Not chosen: u2 stays edited, u3 stays deleted, every other row as it was.
    for (const [key, text] of usersBefore) {
      if (key === k(u1.id) || key === k(added.id)) continue;
      assert.equal(now.get(key), text, key);
    }
    assert.equal(now.size, usersBefore.size - 1);
    assert.deepEqual(await enrollmentsOf(), enrollmentsBefore);
    assert.deepEqual(
      await sql`select xmin::text, ctid::text from public.users where tenant_id = 712`,
      otherTenant,
    );
    // The undo snapshot takes it back.
    const undo = await call(
      "pitr-execute",
      { snapshot_id: run.body.undo_snapshot_id },
      "?wait=true",
    );
    assert.equal(undo.body.status, "completed");
    assert.deepEqual(await usersOf(), usersBefore);
  },
);

dbTest(
  "an enrollment chosen whose user was deleted since is refused, naming the user; with_dependencies adds it",
  async () => {
    const lost = [...enrollmentsThen.keys()].map((k) => JSON.parse(k) as [number, string])
      .find(([, user]) => user === u3.id)!;
    const select = [{
      table: "public.enrollments",
      keys: [{ campaign_id: lost[0], user_id: lost[1] }],
    }];
    const refused = await call("pitr-plan", {
      snapshot_id: snapshotId,
      strategy: "selective",
      select,
    });
    assert.equal(refused.status, 422, JSON.stringify(refused.body));
    assert.equal(refused.body.error.code, "selection_incomplete");
    assert.deepEqual(refused.body.error.missing, [{ table: "public.users", key: { id: u3.id } }]);
    const execRefused = await call("pitr-execute", {
      snapshot_id: snapshotId,
      strategy: "selective",
      select,
    });
    assert.equal(execRefused.status, 422);
    assert.deepEqual(await usersOf(), usersBefore);

    const run = await call(
      "pitr-execute",
      { snapshot_id: snapshotId, strategy: "selective", select, with_dependencies: true },
      "?wait=true",
    );
    assert.equal(run.body.status, "completed", JSON.stringify(run.body.error));
    assert.deepEqual(run.body.dependencies_added, [{ table: "public.users", key: { id: u3.id } }]);
    const users = await usersOf();
    assert.equal(users.get(JSON.stringify([u3.id])), usersThen.get(JSON.stringify([u3.id])));
    const enrollments = await enrollmentsOf();
    const key = JSON.stringify(lost);
    assert.equal(enrollments.get(key), enrollmentsThen.get(key));
    // Only that enrollment of u3 came back: the others were not chosen.
    const ofU3 = (m: Map<string, string>) => [...m.keys()].filter((k) => k.includes(u3.id)).length;
    assert.equal(ofU3(enrollments), 1);
    assert.ok(ofU3(enrollmentsThen) >= 1);
  },
);

dbTest(
  "a key not in the difference is 400 naming it; supabase-js plans a whole-table choice",
  async () => {
    const r = await call("pitr-plan", {
      snapshot_id: snapshotId,
      strategy: "selective",
      select: [{ table: "users", keys: [{ id: "00000000-0000-0000-0000-000000000000" }] }],
    });
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, "unknown_key");
    assert.match(r.body.error.message, /00000000-0000-0000-0000-000000000000/);
    const bad = await call("pitr-plan", {
      snapshot_id: snapshotId,
      strategy: "selective",
      tables: ["users"],
      select: [{ table: "users", all: true }],
    });
    assert.equal(bad.status, 400);

    const supabase = createClient(origin, service, {
      auth: { persistSession: false, autoRefreshToken: false },
    });
    const { data, error } = await supabase.functions.invoke("pitr-plan", {
      body: {
        snapshot_id: snapshotId,
        strategy: "selective",
        select: [{ table: "users", all: true }],
      },
      headers: { Authorization: `Bearer ${service}` },
    });
    assert.equal(error, null);
    assert.deepEqual(data.order, ["public.users"]);
  },
);

dbTest("cleanup: server", async () => {
  await server.shutdown();
});

cleanup(db);
