// The connection budget under load, through a real socket: more concurrent requests than
// connections are answered 2xx, 409 or 503 busy with Retry-After (never 500), the service never
// holds more connections than its budget (counted in pg_stat_activity), and work waiting for a
// tenant holds no connection.
import assert from "node:assert/strict";
import { connect, sessionsOf } from "../shared/db/client.ts";
import { appFromEnv } from "../shared/http/app.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { cleanup, dbTest, tenantDigest, testDatabase } from "./_db.ts";
import { serveTestApp, token } from "./_http.ts";

const db = await testDatabase("load");
const sql = db.sql;
const service = await token({ role: "service_role" });

const TENANTS = [801, 802, 803, 804, 805, 806, 807, 808, 809, 810];
await sql`select public.seed_tenant(t, 20) from unnest(${TENANTS}::bigint[]) t`;

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));
const digest = (t: number) => tenantDigest(sql, t);
const count = async (query: Promise<{ n: string }[]>) => Number((await query)[0].n);

/** A service of its own, with its own budget and application_name so that its connections count. */
function startService(name: string, options: { max: number; queue?: number; waitMs?: number }) {
  const application = `pitr_${name}_${crypto.randomUUID().slice(0, 6)}`;
  const appSql = connect(db.url, { ...options, application });
  const served = serveTestApp(appSql, { swallowBackground: true });
  return {
    ...served,
    sql: appSql,
    application,
    base: `${served.origin}/functions/v1`,
    async stop() {
      await Promise.all(served.background);
      await served.server.shutdown();
      await appSql.end({ timeout: 5 });
    },
  };
}

interface Answer {
  status: number;
  retryAfter: string | null;
  // deno-lint-ignore no-explicit-any
  body: any;
}
async function call(base: string, method: "GET" | "POST", path: string, body?: unknown) {
  const res = await fetch(`${base}/${path}`, {
    method,
    headers: {
      authorization: `Bearer ${service}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return {
    status: res.status,
    retryAfter: res.headers.get("retry-after"),
    body: await res.json(),
  } as Answer;
}

/** Samples the connections of one application every few ms until stopped; returns the peak. */
function watchConnections(application: string) {
  const monitor = connect(db.url, { max: 1, application: "pitr_test_monitor" });
  let peak = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      const [{ n }] = await monitor<{ n: number }[]>`
        select count(*)::int as n from pg_stat_activity
        where application_name = ${application} and backend_type = 'client backend'`;
      peak = Math.max(peak, n);
      await sleep(5);
    }
  })();
  return {
    async stop(): Promise<number> {
      running = false;
      await loop;
      await monitor.end();
      return peak;
    },
  };
}

/** Connections of the application waiting on a lock (a tenant's advisory lock, here). */
async function waitingOnLock(application: string): Promise<number> {
  return await count(sql`select count(*) as n from pg_stat_activity
    where application_name = ${application} and wait_event_type = 'Lock'`);
}

async function until(what: string, check: () => Promise<boolean> | boolean, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Holds a tenant's advisory lock on a connection of its own, as another process would. */
async function holdTenantLock(tenant: number) {
  const other = connect(db.url, { max: 1, application: "pitr_test_other_process" });
  await other`select pg_advisory_lock(hashtext('pitr:tenant'), hashtext(${String(tenant)}))`;
  return { release: () => other.end() };
}

/** Each answer is one the budget allows: never a 500, a 503 only as `busy` with Retry-After. */
function assertAllowed(answers: Answer[]) {
  for (const a of answers) {
    assert.ok([200, 201, 202, 409, 503].includes(a.status), JSON.stringify(a));
    if (a.status === 503) {
      assert.equal(a.body.error.code, "busy");
      assert.match(a.retryAfter ?? "", /^[1-9]\d*$/);
    }
    if (a.status === 409) {
      assert.ok(["tenant_busy", "restore_in_progress"].includes(a.body.error.code), a.body);
    }
  }
}

dbTest(
  "74 concurrent requests on a budget of 4: 2xx, 409 or 503 busy, never more than 4 connections",
  async () => {
    const snaps = new Map<number, string>();
    for (const t of TENANTS) {
      snaps.set(t, (await takeSnapshot(sql, { tenantId: String(t) })).snapshot_id);
    }
    const good = await digest(801);
    const others = await Promise.all(TENANTS.slice(1).map(digest));
    await sql`update public.users set display_name = 'damaged' where tenant_id = 801`;
    const damaged = await digest(801);

    const app = startService("mixed", { max: 4 });
    assert.equal(sessionsOf(app.sql).slots, 2);
    const watch = watchConnections(app.application);
    const requests: Promise<Answer>[] = [];
    const labels: string[] = [];
    for (const t of TENANTS) {
      for (let i = 0; i < 4; i++) {
        const label = `load ${t} ${i}`;
        labels.push(label);
        requests.push(call(app.base, "POST", "pitr-snapshot", { tenant_id: String(t), label }));
      }
      requests.push(call(app.base, "POST", "pitr-plan", { snapshot_id: snaps.get(t) }));
      requests.push(call(app.base, "POST", "pitr-validate", { snapshot_id: snaps.get(t) }));
      requests.push(call(app.base, "GET", `pitr-snapshot?tenant_id=${t}`));
    }
    for (const t of [802, 803, 804]) {
      requests.push(call(app.base, "POST", "pitr-drill", { tenant_id: String(t) }));
    }
    const execute = call(app.base, "POST", "pitr-execute", { snapshot_id: snaps.get(801) });
    requests.push(execute);
    const answers = await Promise.all(requests);
    const started = await execute;
    let final: Answer | undefined;
    if (started.status === 202) {
      for (;;) {
        final = await call(app.base, "GET", `pitr-status?rollback_id=${started.body.rollback_id}`);
        assertAllowed([final]);
        if (!["pending", "running"].includes(final.body.status)) break;
        await sleep(20);
      }
    }
    await app.stop();
    const peak = await watch.stop();

    assert.equal(answers.length, 74);
    assertAllowed(answers);
    assert.ok(peak <= 4, `the service held ${peak} connections on a budget of 4`);
    assert.ok(peak >= 1);
    // Every 201 is a snapshot in the database with its label; no refused one left a row.
    const created = answers.filter((a) => a.status === 201);
    const rows = await sql<{ id: string; label: string }[]>`
      select id, label from public.backup_snapshots where label = any(${labels})`;
    assert.deepEqual(
      rows.map((r) => r.id).sort(),
      created.map((a) => a.body.snapshot_id).sort(),
    );
    // The restore either completed exactly or, refused for want of a connection, changed nothing.
    if (final?.body.status === "completed") {
      assert.equal(await digest(801), good);
    } else {
      assert.equal(await digest(801), damaged, JSON.stringify(final ?? started));
    }
    // Drills, plans and snapshots changed no other tenant.
    assert.deepEqual(await Promise.all(TENANTS.slice(1).map(digest)), others);
  },
);

dbTest(
  "a full session queue answers 503 busy with Retry-After at once; a wait past PITR_QUEUE_WAIT_MS too; nothing is recorded for either",
  async () => {
    const app = startService("full", { max: 2, queue: 1, waitMs: 3000 });
    const lock = await holdTenantLock(801);
    try {
      // The only session waits for 801's lock; 802 queues behind it; 803 finds the queue full.
      const first = call(app.base, "POST", "pitr-snapshot", { tenant_id: "801", label: "first" });
      await until(
        "the session to wait on the lock",
        async () => await waitingOnLock(app.application) === 1,
      );
      const queued = call(app.base, "POST", "pitr-snapshot", { tenant_id: "802", label: "queued" });
      await until("a waiter in the queue", () => sessionsOf(app.sql).queued === 1);
      const full = await call(app.base, "POST", "pitr-snapshot", {
        tenant_id: "803",
        label: "full",
      });
      assert.equal(full.status, 503);
      const restore = await call(app.base, "POST", "pitr-execute", {
        snapshot_id: (await takeSnapshot(sql, { tenantId: "804" })).snapshot_id,
      });
      assert.equal(restore.status, 503);
      const timedOut = await queued;
      assert.equal(timedOut.status, 503);
      assertAllowed([full, restore, timedOut]);
      assert.match(timedOut.body.error.message, /within 3000 ms/);
      await lock.release();
      const answered = await first;
      assert.equal(answered.status, 201, JSON.stringify(answered.body));
    } finally {
      await lock.release();
      await app.stop();
    }
    const labelled = (label: string) =>
      count(sql`select count(*) as n from public.backup_snapshots where label = ${label}`);
    assert.equal(await labelled("first"), 1);
    assert.equal(await labelled("queued"), 0);
    assert.equal(await labelled("full"), 0);
    assert.equal(
      await count(sql`select count(*) as n from public.backup_pitr_rollback_history
        where tenant_id = '804'`),
      0,
    );
  },
);

dbTest(
  "snapshots waiting for a tenant hold no connection each: one session waits on the lock, the rest queue in the process",
  async () => {
    const app = startService("turns", { max: 6 });
    const lock = await holdTenantLock(805);
    let answers: Answer[];
    try {
      const pending = Array.from(
        { length: 8 },
        (_, i) => call(app.base, "POST", "pitr-snapshot", { tenant_id: "805", label: `turn ${i}` }),
      );
      await until(
        "a session to wait on the lock",
        async () => await waitingOnLock(app.application) === 1,
      );
      // Long enough for any other waiter to have opened a session, had it been given one.
      await sleep(300);
      assert.equal(await waitingOnLock(app.application), 1);
      assert.equal(
        await count(sql`select count(*) as n from pg_stat_activity
          where application_name = ${app.application}`),
        1,
      );
      await lock.release();
      answers = await Promise.all(pending);
    } finally {
      await lock.release();
      await app.stop();
    }
    assert.deepEqual(answers.map((a) => a.status), Array(8).fill(201));
    assert.equal(new Set(answers.map((a) => a.body.snapshot_id)).size, 8);
    assert.equal(
      await count(sql`select count(*) as n from public.backup_snapshots
        where tenant_id = '805' and label like 'turn %'`),
      8,
    );
  },
);

dbTest(
  "snapshots of a tenant being restored wait behind the restore without a connection, then answer 201",
  async () => {
    Deno.env.set("PITR_LOCK_TIMEOUT_MS", "20000");
    const snap = await takeSnapshot(sql, { tenantId: "808" });
    const good = await digest(808);
    await sql`update public.lessons set body = 'damaged' where tenant_id = 808`;
    // A row the restore must rewrite stays locked by another session: the restore waits on it.
    const holder = connect(db.url, { max: 1, application: "pitr_test_row_lock" });
    const app = startService("behind_restore", { max: 6 });
    let answers: Answer[];
    let restored: Answer;
    try {
      await holder`begin`;
      await holder`select 1 from public.lessons where tenant_id = 808 for update`;
      const restore = call(app.base, "POST", "pitr-execute?wait=true", {
        snapshot_id: snap.snapshot_id,
      });
      await until(
        "the restore to wait on the row lock",
        async () =>
          await count(sql`select count(*) as n from pg_stat_activity
          where application_name = ${app.application} and wait_event_type = 'Lock'
            and wait_event <> 'advisory'`) === 1,
      );
      const pending = Array.from(
        { length: 5 },
        (_, i) => call(app.base, "POST", "pitr-snapshot", { tenant_id: "808", label: `r ${i}` }),
      );
      await sleep(300);
      // Had they been given sessions, each would wait on the tenant's advisory lock.
      assert.equal(
        await count(sql`select count(*) as n from pg_stat_activity
          where application_name = ${app.application} and wait_event = 'advisory'`),
        0,
      );
      await holder`commit`;
      restored = await restore;
      answers = await Promise.all(pending);
    } finally {
      Deno.env.delete("PITR_LOCK_TIMEOUT_MS");
      await holder.end();
      await app.stop();
    }
    assert.equal(restored.body.status, "completed", JSON.stringify(restored.body.error));
    assert.equal(await digest(808), good);
    assert.deepEqual(answers.map((a) => a.status), Array(5).fill(201));
    // Each snapshot was taken after the restore: it holds the restored rows.
    for (const a of answers) {
      assert.deepEqual(
        a.body.tables.map((t: { checksum: string }) => t.checksum),
        snap.tables.map((t) => t.checksum),
      );
    }
  },
);

dbTest(
  "identical snapshot requests that wait together share one snapshot, taken after they arrived",
  async () => {
    const app = startService("coalesce", { max: 4 });
    const lock = await holdTenantLock(806);
    let answers: Answer[];
    try {
      const request = { tenant_id: "806", label: "hourly" };
      const first = call(app.base, "POST", "pitr-snapshot", request);
      await until(
        "the first to wait on the lock",
        async () => await waitingOnLock(app.application) === 1,
      );
      // A change made while the first run waits: every answer's snapshot must hold it.
      await sql`update public.lessons set body = 'changed while waiting' where tenant_id = 806
        and body = 'Lesson 1'`;
      const rest = Array.from(
        { length: 9 },
        () => call(app.base, "POST", "pitr-snapshot", request),
      );
      await sleep(200);
      await lock.release();
      answers = [await first, ...await Promise.all(rest)];
    } finally {
      await lock.release();
      await app.stop();
    }
    assert.deepEqual(answers.map((a) => a.status), Array(10).fill(201));
    const ids = answers.map((a) => a.body.snapshot_id);
    assert.equal(new Set(ids).size, 2);
    assert.ok(ids.slice(1).every((id) => id === ids[1]));
    assert.equal(
      await count(sql`select count(*) as n from public.backup_snapshots
        where tenant_id = '806' and label = 'hourly'`),
      2,
    );
    // The shared snapshot holds the change; restoring it gives the tenant exactly as it is now.
    const now = await digest(806);
    await sql`update public.lessons set body = 'later' where tenant_id = 806`;
    const restoreApp = startService("coalesce_restore", { max: 4 });
    try {
      const r = await call(restoreApp.base, "POST", "pitr-execute?wait=true", {
        snapshot_id: ids[1],
      });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.status, "completed", JSON.stringify(r.body.error));
    } finally {
      await restoreApp.stop();
    }
    assert.equal(await digest(806), now);
  },
);

dbTest(
  "sessions that all find the FK graph cache stale refresh it side by side: one rewrites it, none fails",
  async () => {
    const sessions = Array.from({ length: 8 }, () => connect(db.url, { max: 1 }));
    try {
      const [{ edges }] = await sql<{ edges: number }[]>`
        select count(*)::int as edges from pitr.fk_edges`;
      assert.ok(edges > 0);
      // Several rounds: the race (each deletes what it saw, then inserts) needs only two to meet.
      for (let round = 0; round < 5; round++) {
        await sql`delete from pitr.backup_fk_constraints_cache`;
        const written = await Promise.all(
          sessions.map(async (s) =>
            (await s<{ n: number }[]>`
            select pitr.refresh_fk_cache() as n`)[0].n
          ),
        );
        assert.deepEqual(written.filter((n) => n > 0), [edges], `round ${round}: ${written}`);
        assert.equal(
          await count(sql`select count(*) as n from pitr.fk_cache_stale() s where s`),
          0,
        );
      }
    } finally {
      await Promise.all(sessions.map((s) => s.end()));
    }
  },
);

dbTest(
  "a tenant locked past PITR_SNAPSHOT_LOCK_WAIT_MS: 409 tenant_busy for the one on the lock and those queued behind it",
  async () => {
    Deno.env.set("PITR_SNAPSHOT_LOCK_WAIT_MS", "800");
    const app = startService("busy_tenant", { max: 4 });
    const lock = await holdTenantLock(807);
    let answers: Answer[];
    try {
      answers = await Promise.all(
        Array.from(
          { length: 3 },
          (_, i) => call(app.base, "POST", "pitr-snapshot", { tenant_id: "807", label: `b ${i}` }),
        ),
      );
    } finally {
      Deno.env.delete("PITR_SNAPSHOT_LOCK_WAIT_MS");
      await lock.release();
      await app.stop();
    }
    for (const a of answers) {
      assert.equal(a.status, 409, JSON.stringify(a.body));
      assert.equal(a.body.error.code, "tenant_busy");
    }
    assert.equal(
      await count(sql`select count(*) as n from public.backup_snapshots
        where tenant_id = '807' and label like 'b %'`),
      0,
    );
  },
);

dbTest(
  "a deployed function with PITR_MAX_CONNECTIONS that is not a whole number ≥ 1 answers 503 invalid_configuration",
  async () => {
    const saved = new Map(
      ["SUPABASE_DB_URL", "PITR_MAX_CONNECTIONS"].map((n) => [n, Deno.env.get(n)]),
    );
    Deno.env.set("SUPABASE_DB_URL", db.url);
    try {
      for (const bad of ["0", "-3", "2.5", "many"]) {
        Deno.env.set("PITR_MAX_CONNECTIONS", bad);
        const res = await appFromEnv().request("/functions/v1/pitr-status?rollback_id=x");
        assert.equal(res.status, 503, bad);
        const body = await res.json();
        assert.equal(body.error.code, "invalid_configuration");
        assert.match(body.error.message, /PITR_MAX_CONNECTIONS must be a whole number/);
      }
    } finally {
      for (const [n, v] of saved) v === undefined ? Deno.env.delete(n) : Deno.env.set(n, v);
    }
  },
);

cleanup(db);
