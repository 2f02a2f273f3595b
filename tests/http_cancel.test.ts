// Cancel and abandoned runs over HTTP, through a real socket: POST pitr-execute/cancel and
// DELETE pitr-execute stop a pending or running restore, which rolls back and records cancelled.
import assert from "node:assert/strict";
import { createRestore } from "../shared/restore/history.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { cleanup, dbTest, tenantDigest, testDatabase } from "./_db.ts";
import { serveTestApp, token, userToken } from "./_http.ts";

// The restore of a locked row waits for it long enough to be cancelled while it waits.
Deno.env.set("PITR_LOCK_TIMEOUT_MS", "20000");

const db = await testDatabase("http_cancel");
const sql = db.sql;

const user = userToken;
const service = await token({ role: "service_role" });
const admin501 = await user("501", "admin");
const viewer501 = await user("501", "viewer");
const admin502 = await user("502", "admin");

const { server, background, origin } = serveTestApp(sql);
const base = `${origin}/functions/v1`;

interface Answer {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
}
async function call(
  method: "GET" | "POST" | "DELETE",
  path: string,
  body?: unknown,
  bearer = service,
): Promise<Answer> {
  const res = await fetch(`${base}/${path}`, {
    method,
    headers: {
      authorization: `Bearer ${bearer}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));
const digest = (t: number) => tenantDigest(sql, t);
const countHistory = async (tenant: string) =>
  Number(
    (await sql<{ n: string }[]>`select count(*) as n
    from public.backup_pitr_rollback_history where tenant_id = ${tenant}`)[0].n,
  );

await sql`select public.seed_tenant(501, 30), public.seed_tenant(502, 30)`;

/** A snapshot of 501, then its lessons damaged and locked by another session. */
async function damagedAndLocked() {
  const snap = await takeSnapshot(sql, { tenantId: "501" });
  const good = await digest(501);
  await sql`update public.lessons set body = body || ' (bad import)' where tenant_id = 501`;
  const damaged = await digest(501);
  const holder = await sql.reserve();
  await holder`begin`;
  await holder`select 1 from public.lessons where tenant_id = 501 for update`;
  const release = async () => {
    await holder`rollback`;
    holder.release();
  };
  return { snapshotId: snap.snapshot_id, good, damaged, release };
}

/** Waits until the restore's own session waits on a row lock. */
async function blockedOnLock(rollbackId: string) {
  for (let i = 0; i < 400; i++) {
    const [r] = await sql`select a.pid from public.backup_pitr_rollback_history h
      join pg_stat_activity a on a.pid = h.backend_pid
      where h.id = ${rollbackId} and a.wait_event_type = 'Lock'`;
    if (r) return;
    await sleep(25);
  }
  throw new Error("the restore never waited on the lock");
}

/** A restore recorded but not started, as a queued or command-line restore would be. */
async function pendingRestore(snapshotId: string, tenantId = "501") {
  const { id } = await createRestore(sql, { snapshotId, tenantId, strategy: "overwrite" });
  return id;
}

dbTest(
  "POST pitr-execute/cancel stops a running restore: 200 cancelled, rows as before, a retry completes",
  async () => {
    const { snapshotId, good, damaged, release } = await damagedAndLocked();
    const other = await digest(502);
    const started = await call("POST", "pitr-execute", { snapshot_id: snapshotId });
    assert.equal(started.status, 202);
    const id = started.body.rollback_id;
    await blockedOnLock(id);
    const t0 = Date.now();
    const r = await call("POST", "pitr-execute/cancel", { rollback_id: id }, admin501);
    assert.ok(Date.now() - t0 < 3000, `cancel took ${Date.now() - t0} ms`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.rollback_id, id);
    assert.equal(r.body.status, "cancelled");
    assert.equal(r.body.error.code, "cancelled");
    assert.equal(r.body.undo_snapshot_id, null);
    assert.deepEqual(r.body.tables_restored, []);
    await Promise.all(background.splice(0));
    await release();
    assert.equal(await digest(501), damaged);
    assert.equal(await digest(502), other);
    const status = await call("GET", `pitr-status?rollback_id=${id}`, undefined, viewer501);
    assert.equal(status.status, 200);
    assert.equal(status.body.status, "cancelled");

    const retry = await call("POST", "pitr-execute?wait=true", { snapshot_id: snapshotId });
    assert.equal(retry.status, 200);
    assert.equal(retry.body.status, "completed", JSON.stringify(retry.body.error));
    assert.equal(await digest(501), good);
  },
);

dbTest(
  "DELETE pitr-execute?rollback_id= cancels a pending restore at once, and it never runs",
  async () => {
    const { snapshot_id } = await takeSnapshot(sql, { tenantId: "501" });
    await sql`update public.lessons set body = 'after the snapshot' where tenant_id = 501`;
    const changed = await digest(501);
    const id = await pendingRestore(snapshot_id);
    const busy = await call("POST", "pitr-execute", { snapshot_id });
    assert.equal(busy.status, 409);
    const r = await call("DELETE", `pitr-execute?rollback_id=${id}`, undefined, admin501);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.status, "cancelled");
    assert.equal(r.body.started_at, null);
    assert.equal(r.body.error.code, "cancelled");
    assert.equal((await executeRestore(sql, id)).status, "cancelled");
    assert.equal(await digest(501), changed);
    // The tenant is free again.
    const next = await call("POST", "pitr-execute?wait=true", { snapshot_id });
    assert.equal(next.body.status, "completed", JSON.stringify(next.body.error));
  },
);

dbTest(
  "cancel: a viewer is 403, another tenant's admin and unknown ids 404, bad input 400; nothing changes",
  async () => {
    const { snapshot_id } = await takeSnapshot(sql, { tenantId: "501" });
    const id = await pendingRestore(snapshot_id);
    for (
      const [bearer, status, code] of [
        [viewer501, 403, "forbidden"],
        [admin502, 404, "restore_not_found"],
      ] as const
    ) {
      for (
        const r of [
          await call("POST", "pitr-execute/cancel", { rollback_id: id }, bearer),
          await call("DELETE", `pitr-execute?rollback_id=${id}`, undefined, bearer),
        ]
      ) {
        assert.equal(r.status, status, code);
        assert.equal(r.body.error.code, code);
      }
    }
    const still = await call("GET", `pitr-status?rollback_id=${id}`);
    assert.equal(still.body.status, "pending");

    const missing = crypto.randomUUID();
    for (
      const r of [
        await call("POST", "pitr-execute/cancel", { rollback_id: missing }),
        await call("DELETE", `pitr-execute?rollback_id=${missing}`),
        await call("POST", "pitr-execute/cancel", { rollback_id: "'; select 1 --" }),
      ]
    ) {
      assert.equal(r.status, 404);
      assert.equal(r.body.error.code, "restore_not_found");
    }
    // A viewer is refused before the lookup: it cannot learn which ids exist.
    const viewerMissing = await call(
      "POST",
      "pitr-execute/cancel",
      { rollback_id: missing },
      viewer501,
    );
    assert.equal(viewerMissing.status, 403);
    for (
      const r of [
        await call("POST", "pitr-execute/cancel", {}),
        await call("POST", "pitr-execute/cancel", { rollback_id: id, force: true }),
        await call("DELETE", "pitr-execute"),
        await call("DELETE", `pitr-execute?rollback_id=${id}&wait=true`),
      ]
    ) {
      assert.equal(r.status, 400);
      assert.equal(r.body.error.code, "invalid_request");
    }
    const noToken = await fetch(`${base}/pitr-execute/cancel`, {
      method: "POST",
      body: JSON.stringify({ rollback_id: id }),
    });
    assert.equal(noToken.status, 401);
    assert.equal((await noToken.json()).error.code, "missing_token");
    // A known path with a method it does not take (tests/http_support.test.ts has the rest).
    const get = await call("GET", "pitr-execute/cancel");
    assert.equal(get.status, 405);
    assert.equal(get.body.error.code, "method_not_allowed");

    assert.equal((await call("GET", `pitr-status?rollback_id=${id}`)).body.status, "pending");
    const done = await call("POST", "pitr-execute/cancel", { rollback_id: id });
    assert.equal(done.body.status, "cancelled");
  },
);

dbTest("cancel of a finished restore changes nothing and answers its status", async () => {
  const { snapshot_id } = await takeSnapshot(sql, { tenantId: "502" });
  await sql`update public.lessons set body = 'drift' where tenant_id = 502`;
  const r = await call("POST", "pitr-execute?wait=true", { snapshot_id }, service);
  assert.equal(r.body.status, "completed");
  const restored = await digest(502);
  const c = await call(
    "POST",
    "pitr-execute/cancel",
    { rollback_id: r.body.rollback_id },
    admin502,
  );
  assert.equal(c.status, 200);
  assert.equal(c.body.status, "completed");
  assert.deepEqual({ ...c.body, eta_seconds: 0 }, { ...r.body, eta_seconds: 0 });
  assert.equal(await digest(502), restored);
});

dbTest(
  "a run whose process died is reported failed with code abandoned, and a new restore is allowed",
  async () => {
    const { snapshot_id } = await takeSnapshot(sql, { tenantId: "502" });
    const before = await digest(502);
    const id = await pendingRestore(snapshot_id, "502");
    // What a killed Edge Function leaves behind: running, its last heartbeat long ago, no lock.
    await sql`update public.backup_pitr_rollback_history
      set status = 'running', started_at = clock_timestamp() - interval '1 hour',
        heartbeat_at = clock_timestamp() - interval '1 hour'
      where id = ${id}`;
    const rows = await countHistory("502");
    const s = await call("GET", `pitr-status?rollback_id=${id}`, undefined, admin502);
    assert.equal(s.status, 200);
    assert.equal(s.body.status, "failed");
    assert.equal(s.body.error.code, "abandoned");
    assert.match(s.body.error.message, /stopped/);
    const cancel = await call("POST", "pitr-execute/cancel", { rollback_id: id }, admin502);
    assert.equal(cancel.body.status, "failed");
    const next = await call("POST", "pitr-execute?wait=true", { snapshot_id }, admin502);
    assert.equal(next.status, 200);
    assert.equal(next.body.status, "completed", JSON.stringify(next.body.error));
    assert.equal(await countHistory("502"), rows + 1);
    assert.equal(await digest(502), before);
  },
);

dbTest("the OpenAPI document describes both cancel routes and the cancelled status", async () => {
  const r = await call("GET", "openapi.json");
  assert.equal(r.status, 200);
  const cancel = r.body.paths["/functions/v1/pitr-execute/cancel"].post;
  const del = r.body.paths["/functions/v1/pitr-execute"].delete;
  for (const op of [cancel, del]) {
    assert.deepEqual(Object.keys(op.responses).sort(), [
      "200",
      "400",
      "401",
      "403",
      "404",
      "500",
      "503",
    ]);
  }
  assert.equal(del.parameters[0].name, "rollback_id");
  assert.ok(r.body.components.schemas.Status.properties.status.enum.includes("cancelled"));
});

dbTest("stop the server", async () => {
  await Promise.all(background.splice(0));
  await server.shutdown();
});

cleanup(db);
