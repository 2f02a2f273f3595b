// Drills across the fleet: each call drills the least recently drilled tenants within its time
// budget, a failed tenant comes first again, the report puts failures first, and only the service
// role (every tenant) or a tenant's admin (its own) may drill or read the report.
import assert from "node:assert/strict";
import { createApp } from "../shared/http/app.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { cleanup, dbTest, netStandIns, testDatabase } from "./_db.ts";
import { TEST_SECRET, token, userToken } from "./_http.ts";

const db = await testDatabase("drill_fleet");
const sql = db.sql;
const app = createApp({ sql, auth: { jwtSecret: TEST_SECRET }, log: () => {} });

const TENANTS = ["1101", "1102", "1103", "1104", "1105"];
await sql`select public.seed_tenant(t, 3) from unnest(${TENANTS.map(Number)}::bigint[]) t`;
await sql`select public.seed_tenant(1106, 3)`; // no snapshot yet: not in the fleet
for (const t of TENANTS) await takeSnapshot(sql, { tenantId: t });

const service = await token({ role: "service_role" });
const admin1101 = await userToken("1101", "admin");
const viewer1101 = await userToken("1101", "viewer");
const plain1101 = await userToken("1101");

async function call(
  method: "GET" | "POST",
  path: string,
  options: { bearer?: string; body?: unknown } = {},
) {
  const res = await app.request(`/functions/v1/${path}`, {
    method,
    headers: {
      authorization: `Bearer ${options.bearer ?? service}`,
      ...(options.body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  // deno-lint-ignore no-explicit-any
  return { status: res.status, body: await res.json() as any };
}

const drilled = (body: { drills: { tenant_id: string }[] }) => body.drills.map((d) => d.tenant_id);

async function drillsOf(tenant: string): Promise<number> {
  const [{ n }] = await sql<{ n: string }[]>`
    select count(*) as n from public.backup_pitr_drills where tenant_id = ${tenant}`;
  return Number(n);
}

dbTest(
  "a tiny budget drills one tenant a call, least recently drilled first; five calls cover the fleet once",
  async () => {
    const order: string[] = [];
    for (let i = 0; i < TENANTS.length; i++) {
      const r = await call("POST", "pitr-drill", { body: { budget_s: 0.001 } });
      assert.equal(r.status, 200);
      assert.equal(r.body.budget_ms, 1);
      assert.equal(r.body.drills.length, 1);
      assert.ok(r.body.drills[0].ok, r.body.drills[0].message);
      assert.equal(r.body.pending, TENANTS.length - 1);
      order.push(...drilled(r.body));
    }
    assert.deepEqual(order, TENANTS); // never drilled: in tenant order
    for (const t of TENANTS) assert.equal(await drillsOf(t), 1, t);
    assert.equal(await drillsOf("1106"), 0);
    // The sixth call starts the next round with the one drilled longest ago.
    const next = await call("POST", "pitr-drill", { body: { budget_s: 0.001 } });
    assert.deepEqual(drilled(next.body), ["1101"]);
  },
);

dbTest(
  "a drill whose last duration does not fit the remaining budget is not started, and the next call starts with it",
  async () => {
    // History as a slow night would have left it: 1104 took 10 minutes, longest ago of all but
    // 1103, whose last drill was quick.
    await sql`delete from public.backup_pitr_drills where tenant_id in ('1103', '1104')`;
    await sql`insert into public.backup_pitr_drills (tenant_id, ok, duration_ms, rows, message,
        created_at)
      values ('1103', true, 10, 1, 'earlier', '1999-01-01'),
        ('1104', true, 600000, 1, 'earlier', '2000-01-01')`;
    const r = await call("POST", "pitr-drill", { body: { budget_s: 30 } });
    assert.equal(r.status, 200);
    assert.equal(r.body.budget_ms, 30000);
    assert.equal(r.body.drills[0].tenant_id, "1103");
    assert.ok(!drilled(r.body).includes("1104"), "a 10-minute drill started on a 30 s budget");
    assert.deepEqual([...drilled(r.body)].sort(), ["1101", "1102", "1103", "1105"]);
    assert.equal(r.body.pending, 1);
    assert.ok(r.body.elapsed_ms <= 30000, `${r.body.elapsed_ms} ms`);
    // Next call: 1104 first, however long it may take (the first drill of a call always starts).
    const next = await call("POST", "pitr-drill", { body: { budget_s: 0.001 } });
    assert.deepEqual(drilled(next.body), ["1104"]);
    assert.ok(next.body.drills[0].ok);
  },
);

dbTest(
  "a failed drill counts as not drilled: the tenant comes first next call, and the report puts it first",
  async () => {
    // A change the snapshot must undo, which a constraint added since refuses: 1102's drill fails.
    await sql`update public.lessons set body = 'drifted' where tenant_id = 1102`;
    await sql`alter table public.lessons add constraint lessons_no_1102
      check (tenant_id <> 1102 or body = 'drifted') not valid`;
    const all = await call("POST", "pitr-drill", { body: { budget_s: 60 } });
    assert.equal(all.status, 200);
    assert.deepEqual([...drilled(all.body)].sort(), TENANTS);
    const failed = all.body.drills.filter((d: { ok: boolean }) => !d.ok);
    assert.deepEqual(failed.map((d: { tenant_id: string }) => d.tenant_id), ["1102"]);

    const retry = await call("POST", "pitr-drill", { body: { budget_s: 0.001 } });
    assert.deepEqual(drilled(retry.body), ["1102"]);
    assert.equal(retry.body.drills[0].ok, false);

    const report = await call("GET", "pitr-drill");
    assert.equal(report.status, 200);
    const first = report.body.tenants[0];
    assert.equal(first.tenant_id, "1102");
    assert.equal(first.status, "failed");
    assert.equal(first.failures_since_ok, 2);
    assert.equal(first.last_message, retry.body.drills[0].message);
    assert.equal(report.body.summary.failed, 1);

    await sql`alter table public.lessons drop constraint lessons_no_1102`;
    const fixed = await call("POST", "pitr-drill", { body: { budget_s: 0.001 } });
    assert.deepEqual(drilled(fixed.body), ["1102"]);
    assert.equal(fixed.body.drills[0].ok, true, fixed.body.drills[0].message);
  },
);

dbTest(
  "the report: failures, then never drilled, then longest since drilled; duration and outcome from the drills",
  async () => {
    await takeSnapshot(sql, { tenantId: "1106" }); // now in the fleet, never drilled
    await sql`insert into public.backup_pitr_drills (tenant_id, ok, duration_ms, rows, message)
      values ('1105', false, 7, 0, 'tenant_busy: a drill that could not start')`;
    const r = await call("GET", "pitr-drill");
    assert.equal(r.status, 200);
    const rows = r.body.tenants as {
      tenant_id: string;
      status: string;
      last_drill_at: string | null;
      last_duration_ms: number | null;
      rto_ms: number | null;
      last_ok_at: string | null;
    }[];
    assert.deepEqual(rows.map((t) => [t.tenant_id, t.status]).slice(0, 2), [
      ["1105", "failed"],
      ["1106", "never"],
    ]);
    const ok = rows.slice(2);
    assert.ok(ok.every((t) => t.status === "ok"));
    assert.deepEqual(
      ok.map((t) => t.last_drill_at),
      [...ok.map((t) => t.last_drill_at)].sort(),
      "oldest drill first",
    );
    assert.equal(rows.length, 6);
    assert.deepEqual(r.body.summary, {
      tenants: 6,
      failed: 1,
      never: 1,
      ok: 4,
      max_rto_ms: Math.max(...rows.map((t) => t.rto_ms ?? 0)),
    });
    // Each tenant's figures are its rows': the last drill, and the last good one's duration.
    const truth = await sql<
      { tenant_id: string; last_ms: number; last_at: string; ok_ms: number | null }[]
    >`
      select t.tenant_id,
        (select duration_ms from public.backup_pitr_drills d where d.tenant_id = t.tenant_id
         order by created_at desc limit 1) as last_ms,
        (select to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
         from public.backup_pitr_drills d where d.tenant_id = t.tenant_id
         order by created_at desc limit 1) as last_at,
        (select duration_ms from public.backup_pitr_drills d where d.tenant_id = t.tenant_id
         and ok order by created_at desc limit 1) as ok_ms
      from unnest(${TENANTS}::text[]) t(tenant_id)`;
    for (const t of truth) {
      const row = rows.find((x) => x.tenant_id === t.tenant_id)!;
      assert.equal(row.last_duration_ms, t.last_ms, t.tenant_id);
      assert.equal(row.last_drill_at, t.last_at, t.tenant_id);
      assert.equal(row.rto_ms, t.ok_ms, t.tenant_id);
    }
    // The same rows, by SQL (pitr.drill_report), for an operator.
    const [{ n }] = await sql<{ n: string }[]>`select count(*) as n from pitr.drill_report`;
    assert.equal(Number(n), 6);
    const limited = await call("GET", "pitr-drill?limit=1");
    assert.deepEqual(limited.body.tenants.map((t: { tenant_id: string }) => t.tenant_id), ["1105"]);
    assert.equal(limited.body.summary.tenants, 6);
  },
);

dbTest("two fleet calls at once: one drills, the other is 409 drills_running", async () => {
  const [a, b] = await Promise.all([
    call("POST", "pitr-drill", { body: { budget_s: 0.5 } }),
    call("POST", "pitr-drill", { body: { budget_s: 0.5 } }),
  ]);
  assert.deepEqual([a.status, b.status].sort(), [200, 409]);
  const refused = a.status === 409 ? a : b;
  assert.equal(refused.body.error.code, "drills_running");
  // The lease is free again afterwards.
  assert.equal((await call("POST", "pitr-drill", { body: { budget_s: 0.001 } })).status, 200);
});

dbTest(
  "only the service role drills or reads every tenant; an admin its own tenant; nobody else",
  async () => {
    const own = await call("GET", "pitr-drill", { bearer: admin1101 });
    assert.equal(own.status, 200);
    assert.deepEqual(own.body.tenants.map((t: { tenant_id: string }) => t.tenant_id), ["1101"]);
    assert.equal(own.body.summary.tenants, 1);
    const other = await call("GET", "pitr-drill?tenant_id=1102", { bearer: admin1101 });
    assert.equal(other.status, 403);
    assert.equal(other.body.error.code, "forbidden_tenant");
    for (const bearer of [viewer1101, plain1101]) {
      const r = await call("GET", "pitr-drill", { bearer });
      assert.equal(r.status, 403);
      assert.equal(r.body.error.code, "forbidden");
    }
    assert.equal((await call("GET", "pitr-drill", { bearer: "not-a-token" })).status, 401);
    const anon = await call("GET", "pitr-drill", { bearer: await token({ role: "anon" }) });
    assert.equal(anon.status, 403);
    // An admin's call without tenant_id drills its own tenant only, never the fleet.
    const before = await drillsOf("1102");
    const mine = await call("POST", "pitr-drill", { bearer: admin1101, body: {} });
    assert.equal(mine.status, 200);
    assert.deepEqual(drilled(mine.body), ["1101"]);
    assert.equal(await drillsOf("1102"), before);
    const bad = await call("POST", "pitr-drill", { body: { tenant_id: "1101", budget_s: 5 } });
    assert.equal(bad.status, 400);
    const big = await call("POST", "pitr-drill", { body: { budget_s: 141 } });
    assert.equal(big.status, 400);
  },
);

dbTest(
  "the cron migration is a no-op without pg_cron; its drill job posts {} to pitr-drill with Vault's secrets",
  async () => {
    const [{ applied, cron }] = await sql<{ applied: boolean; cron: boolean }[]>`
      select exists (select from supabase_migrations.schema_migrations
        where version = '20261128230200') as applied,
        exists (select from pg_namespace where nspname = 'cron') as cron`;
    assert.equal(applied, true);
    if (cron) return; // a real Supabase database: the jobs are scheduled, not ours to run here
    const text = await Deno.readTextFile(
      new URL("../supabase/migrations/20261128230200_cron_fleet.sql", import.meta.url),
    );
    assert.match(text, /cron\.schedule\('pitr-log-maintenance', '41 13 \* \* \*'/);
    assert.match(text, /'\*\/2 1-4 \* \* \*'/);
    const job = /\$job\$([\s\S]*)\$job\$/.exec(text)![1];
    class Rollback {
      constructor(
        readonly calls: { url: string; headers: Record<string, string>; body: unknown }[],
      ) {}
    }
    const posted = await sql.begin(async (tx) => {
      await netStandIns(tx);
      await tx`insert into vault.decrypted_secrets values
      ('project_url', 'https://ref.supabase.co'), ('service_role_key', 'key-1')`;
      await tx.unsafe(job); // the repository's own migration text
      throw new Rollback([...await tx<Rollback["calls"]>`select * from net.calls`]);
    }).catch((e) => {
      if (e instanceof Rollback) return e;
      throw e;
    });
    assert.equal(posted.calls.length, 1);
    assert.equal(posted.calls[0].url, "https://ref.supabase.co/functions/v1/pitr-drill");
    assert.equal(posted.calls[0].headers.Authorization, "Bearer key-1");
    assert.deepEqual(posted.calls[0].body, {});
  },
);

cleanup(db);
