// Faults around a restore: a row lock held by another session, a statement timeout, the
// restore's session terminated, a cancel, the process running it killed, and a database restart
// between snapshot and restore. After each, the tenant's data is as before the restore began,
// status tells what happened, and a retry succeeds.
import assert from "node:assert/strict";
import { connect } from "../shared/db/client.ts";
import { startEmbedded } from "../shared/db/embedded.ts";
import { migrate } from "../shared/db/migrate.ts";
import { cancelRestore, createRestore, getStatus } from "../shared/restore/history.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { cleanup, dbTest, tenantDigest, testDatabase } from "./_db.ts";

Deno.env.set("PITR_HEARTBEAT_MS", "200");
Deno.env.set("PITR_HEARTBEAT_STALE_MS", "1500");

const db = await testDatabase("faults");
const sql = db.sql;
await sql`select public.seed_tenant(401, 30), public.seed_tenant(402, 30)`;

const digest = (t: number) => tenantDigest(sql, t);
const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

/** Damages tenant 401's lessons, then holds a lock on them from another session. */
async function damagedAndLocked() {
  const snap = await takeSnapshot(sql, { tenantId: "401" });
  const good = await digest(401);
  await sql`update public.lessons set body = body || ' (bad import)' where tenant_id = 401`;
  const damaged = await digest(401);
  const holder = await sql.reserve();
  await holder`begin`;
  await holder`select 1 from public.lessons where tenant_id = 401 for update`;
  const release = async () => {
    await holder`rollback`;
    holder.release();
  };
  return { snap, good, damaged, release };
}

/** Waits until the restore's session is waiting on a lock. */
async function blockedOnLock(rollbackId: string) {
  for (let i = 0; i < 200; i++) {
    const [r] = await sql`select a.pid from public.backup_pitr_rollback_history h
      join pg_stat_activity a on a.pid = h.backend_pid
      where h.id = ${rollbackId} and a.wait_event_type = 'Lock'`;
    if (r) return r.pid as number;
    await sleep(25);
  }
  throw new Error("the restore never waited on the lock");
}

async function retrySucceeds(snapshotId: string, good: string) {
  const { id } = await createRestore(sql, { snapshotId, tenantId: "401", strategy: "overwrite" });
  const status = await executeRestore(sql, id);
  assert.equal(status.status, "completed", JSON.stringify(status.error));
  assert.equal(await digest(401), good);
}

dbTest(
  "a row lock held by another session: the restore waits lock_timeout, then fails cleanly",
  async () => {
    const { snap, good, damaged, release } = await damagedAndLocked();
    const other = await digest(402);
    const { id } = await createRestore(sql, {
      snapshotId: snap.snapshot_id,
      tenantId: "401",
      strategy: "overwrite",
    });
    const started = Date.now();
    const status = await executeRestore(sql, id, { lockTimeoutMs: 300 });
    await release();
    assert.ok(Date.now() - started >= 300);
    assert.equal(status.status, "failed");
    assert.equal(status.error?.code, "lock_timeout");
    assert.equal(status.error?.table, "public.lessons");
    assert.match(status.error!.message, /locked by another session/);
    assert.equal(await digest(401), damaged);
    assert.equal(await digest(402), other);
    await retrySucceeds(snap.snapshot_id, good);
  },
);

dbTest("a statement timeout fails the restore cleanly and changes nothing", async () => {
  const { snap, good, damaged, release } = await damagedAndLocked();
  const { id } = await createRestore(sql, {
    snapshotId: snap.snapshot_id,
    tenantId: "401",
    strategy: "overwrite",
  });
  const status = await executeRestore(sql, id, { lockTimeoutMs: 10_000, statementTimeoutMs: 300 });
  await release();
  assert.equal(status.status, "failed");
  assert.equal(status.error?.code, "statement_timeout");
  assert.equal(await digest(401), damaged);
  await retrySucceeds(snap.snapshot_id, good);
});

dbTest("the restore's session terminated mid-restore rolls back and is recorded", async () => {
  const { snap, good, damaged, release } = await damagedAndLocked();
  const { id } = await createRestore(sql, {
    snapshotId: snap.snapshot_id,
    tenantId: "401",
    strategy: "overwrite",
  });
  const running = executeRestore(sql, id, { lockTimeoutMs: 20_000 });
  const pid = await blockedOnLock(id);
  await sql`select pg_terminate_backend(${pid})`;
  const status = await running;
  await release();
  assert.equal(status.status, "failed");
  assert.equal(status.error?.code, "connection_lost");
  assert.equal(await digest(401), damaged);
  assert.equal((await getStatus(sql, id)).status, "failed");
  await retrySucceeds(snap.snapshot_id, good);
});

dbTest("cancel stops a running restore promptly, rolls it back and records cancelled", async () => {
  const { snap, good, damaged, release } = await damagedAndLocked();
  const { id } = await createRestore(sql, {
    snapshotId: snap.snapshot_id,
    tenantId: "401",
    strategy: "overwrite",
  });
  const running = executeRestore(sql, id, { lockTimeoutMs: 20_000 });
  await blockedOnLock(id);
  const started = Date.now();
  const answer = await cancelRestore(sql, id);
  assert.ok(Date.now() - started < 3000);
  assert.equal(answer.status, "cancelled");
  assert.equal((await running).status, "cancelled");
  await release();
  assert.equal(await digest(401), damaged);
  await retrySucceeds(snap.snapshot_id, good);
});

dbTest("cancel of a pending restore marks it cancelled, and it never runs", async () => {
  const snap = await takeSnapshot(sql, { tenantId: "401" });
  await sql`update public.lessons set body = 'pending change' where tenant_id = 401`;
  const changed = await digest(401);
  const { id } = await createRestore(sql, {
    snapshotId: snap.snapshot_id,
    tenantId: "401",
    strategy: "overwrite",
  });
  assert.equal((await cancelRestore(sql, id)).status, "cancelled");
  assert.equal((await executeRestore(sql, id)).status, "cancelled");
  assert.equal(await digest(401), changed);
  const { id: again } = await createRestore(sql, {
    snapshotId: snap.snapshot_id,
    tenantId: "401",
    strategy: "overwrite",
  });
  assert.equal((await executeRestore(sql, again)).status, "completed");
});

dbTest(
  "the process running a restore killed with SIGKILL: status turns abandoned, a retry succeeds",
  async () => {
    const { snap, good, damaged, release } = await damagedAndLocked();
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "shared/cli/restore.ts", "--snapshot", snap.snapshot_id],
      env: {
        DATABASE_URL: db.url,
        SUPABASE_DB_URL: "",
        PITR_LOCK_TIMEOUT_MS: "60000",
        PITR_HEARTBEAT_MS: "200",
      },
      stdout: "null",
      stderr: "null",
    }).spawn();
    let id = "";
    for (let i = 0; i < 400 && !id; i++) {
      const [r] = await sql`select id from public.backup_pitr_rollback_history
      where snapshot_id = ${snap.snapshot_id} and status = 'running'`;
      if (r) id = r.id;
      else await sleep(25);
    }
    assert.ok(id, "the command-line restore started");
    await blockedOnLock(id);
    child.kill("SIGKILL");
    await child.status;
    // The session notices its client is gone once the lock is released, and rolls back.
    await release();
    let status = await getStatus(sql, id);
    for (let i = 0; i < 200 && status.status === "running"; i++) {
      await sleep(50);
      status = await getStatus(sql, id);
    }
    assert.equal(status.status, "failed");
    assert.equal(status.error?.code, "abandoned");
    assert.equal(await digest(401), damaged);
    await retrySucceeds(snap.snapshot_id, good);
  },
);

dbTest(
  "a database restarted between snapshot and restore: the restore completes exactly",
  async () => {
    // A cluster of its own, deleted at the end whatever happens.
    const server = await startEmbedded(".pitr/test-restart-pg");
    const url = new URL(server.url);
    const port = Number(url.port);
    url.pathname = "/postgres";
    let own = connect(url.toString(), { max: 4 });
    try {
      await own`drop schema if exists crm cascade`;
      await own`drop schema if exists public cascade`;
      await own`drop schema if exists pitr cascade`;
      await own`drop schema if exists pitr_store cascade`;
      await own`drop schema if exists supabase_migrations cascade`;
      await own`create schema public`;
      await migrate(own);
      await own.unsafe(await Deno.readTextFile(new URL("./fixtures/app.sql", import.meta.url)));
      await own`select public.seed_tenant(501, 20)`;
      const good = (await own<{ d: string }[]>`select public.tenant_digest(501) as d`)[0].d;
      const snap = await takeSnapshot(own, { tenantId: "501" });
      await own`delete from public.users where tenant_id = 501 and email like 'u1%'`;
      await own.end();
      await server.stop();
      const again = await startEmbedded(".pitr/test-restart-pg", port);
      own = connect(url.toString(), { max: 4 });
      try {
        const { id } = await createRestore(own, {
          snapshotId: snap.snapshot_id,
          tenantId: "501",
          strategy: "overwrite",
        });
        const status = await executeRestore(own, id);
        assert.equal(status.status, "completed", JSON.stringify(status.error));
        assert.equal(
          (await own<{ d: string }[]>`select public.tenant_digest(501) as d`)[0].d,
          good,
        );
      } finally {
        await own.end();
        await again.stop();
        await again.remove();
      }
    } catch (e) {
      await own.end().catch(() => {});
      await server.stop().catch(() => {});
      await server.remove();
      throw e;
    }
  },
);

cleanup(db);
