// Faults around a restore: a row lock held by another session, a statement timeout, the
// restore's session terminated at each phase (and with its close never reaching the client), a
// cancel (of a statement, of a session idle in its transaction, of a pid another session now has),
// the process running it killed or frozen, and a database restart between snapshot and restore.
// After each, the tenant's data is as before the restore began, status tells what happened within
// seconds, and a retry succeeds.
import assert from "node:assert/strict";
import { connect } from "../shared/db/client.ts";
import { startEmbedded } from "../shared/db/embedded.ts";
import { migrate } from "../shared/db/migrate.ts";
import { cancelRestore, createRestore, getStatus } from "../shared/restore/history.ts";
import { executeRestore, type RestorePhase } from "../shared/restore/execute.ts";
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

const PHASES: RestorePhase[] = ["start", "catalog", "undo", "diff", "writes", "checks", "commit"];

/** Snapshots of kind undo of a tenant: one committed outside a restore's transaction is a leak. */
async function undoSnapshots(tenant: string): Promise<number> {
  const [{ n }] = await sql<{ n: string }[]>`select count(*) as n from public.backup_snapshots
    where tenant_id = ${tenant} and kind = 'undo'`;
  return Number(n);
}

/**
 * The restore's own session: by the pid and backend_start it recorded, or, before its first
 * statement has recorded them, the one session of this database idle in the transaction it began.
 */
async function sessionOf(rollbackId: string): Promise<number> {
  const [r] = await sql<{ pid: number }[]>`select a.pid
    from public.backup_pitr_rollback_history h
    join pg_stat_activity a on a.pid = h.backend_pid and a.backend_start = h.backend_start
    where h.id = ${rollbackId}`;
  if (r) return r.pid;
  const begun = await sql<{ pid: number }[]>`select pid from pg_stat_activity
    where datname = current_database() and state = 'idle in transaction'
      and query like 'begin%'`;
  assert.equal(begun.length, 1, "one session has just begun the restore's transaction");
  return begun[0].pid;
}

/** Terminates a backend; `seen`: waits until it is gone, and a little more for its client to read the close. */
async function terminate(pid: number, seen: boolean) {
  await sql`select pg_terminate_backend(${pid})`;
  if (!seen) return;
  for (let i = 0; i < 200; i++) {
    if ((await sql`select from pg_stat_activity where pid = ${pid}`).length === 0) break;
    await sleep(10);
  }
  await sleep(100);
}

for (const phase of PHASES) {
  dbTest(
    `the restore's session terminated as its ${phase} phase begins: failed within seconds, rows unchanged, a retry succeeds`,
    async () => {
      const snap = await takeSnapshot(sql, { tenantId: "401" });
      const good = await digest(401);
      // At once: the next statement meets a socket the server is closing. Seen: the client has
      // read the close, and the next statement would have gone to a new connection.
      for (const seen of [false, true]) {
        await sql`update public.lessons set body = body || ' (bad import)' where tenant_id = 401`;
        const damaged = await digest(401);
        const undo = await undoSnapshots("401");
        const { id } = await createRestore(sql, {
          snapshotId: snap.snapshot_id,
          tenantId: "401",
          strategy: "overwrite",
        });
        let killedAt = 0;
        const status = await executeRestore(sql, id, {
          onPhase: async (p) => {
            if (p !== phase) return;
            const pid = await sessionOf(id);
            killedAt = Date.now();
            await terminate(pid, seen);
          },
        });
        const took = Date.now() - killedAt;
        assert.ok(killedAt > 0, `the ${phase} phase was reached`);
        assert.ok(took < 3000, `${phase} (seen ${seen}): failed after ${took} ms`);
        assert.equal(status.status, "failed", `${phase}: ${JSON.stringify(status)}`);
        assert.equal(status.error?.code, "connection_lost");
        assert.equal(status.undo_snapshot_id, null);
        assert.equal((await getStatus(sql, id)).status, "failed");
        assert.equal(await digest(401), damaged);
        assert.equal(await undoSnapshots("401"), undo, "no undo snapshot was committed");
        await retrySucceeds(snap.snapshot_id, good);
      }
    },
  );
}

dbTest(
  "the restore's session terminated while its undo snapshot waits on a table lock: failed at once",
  async () => {
    const snap = await takeSnapshot(sql, { tenantId: "401" });
    const good = await digest(401);
    await sql`update public.lessons set body = body || ' (bad import)' where tenant_id = 401`;
    const damaged = await digest(401);
    const undo = await undoSnapshots("401");
    const holder = await sql.reserve();
    const { id } = await createRestore(sql, {
      snapshotId: snap.snapshot_id,
      tenantId: "401",
      strategy: "overwrite",
    });
    let killedAt = 0;
    let killing: Promise<void> = Promise.resolve();
    const status = await executeRestore(sql, id, {
      lockTimeoutMs: 20_000,
      onPhase: async (p) => {
        if (p !== "undo") return;
        await holder`begin`;
        await holder`lock table public.lessons in access exclusive mode`;
        killing = (async () => {
          const pid = await blockedOnLock(id);
          await sql`select pg_terminate_backend(${pid})`;
          killedAt = Date.now();
        })();
      },
    });
    await killing;
    await holder`rollback`;
    holder.release();
    assert.ok(Date.now() - killedAt < 3000);
    assert.equal(status.status, "failed");
    assert.equal(status.error?.code, "connection_lost");
    assert.equal(await digest(401), damaged);
    assert.equal(await undoSnapshots("401"), undo);
    await retrySucceeds(snap.snapshot_id, good);
  },
);

/**
 * A TCP proxy to the test's PostgreSQL that never passes the server's end of a connection on to
 * the client: what a client sees when the FIN is lost (a network partition, a NAT that dropped
 * the flow). Data still flows both ways while the server's side is open.
 */
function proxyLosingServerClose() {
  const target = new URL(db.url);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  (async () => {
    for await (const client of listener) {
      const server = await Deno.connect({
        hostname: target.hostname,
        port: Number(target.port || 5432),
      });
      conns.push(client, server);
      client.readable.pipeTo(server.writable, { preventCancel: true }).catch(() => {});
      server.readable.pipeTo(client.writable, { preventClose: true, preventAbort: true })
        .catch(() => {});
    }
  })().catch(() => {});
  const url = new URL(db.url);
  url.hostname = "127.0.0.1";
  url.port = String((listener.addr as Deno.NetAddr).port);
  return {
    url: url.toString(),
    close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // already closed by its other end
        }
      }
    },
  };
}

dbTest(
  "a session gone without its client hearing of it: the heartbeat finds it gone and fails the restore at once",
  async () => {
    const proxy = proxyLosingServerClose();
    const viaProxy = connect(proxy.url, { max: 4 });
    try {
      const snap = await takeSnapshot(sql, { tenantId: "401" });
      const good = await digest(401);
      await sql`update public.lessons set body = body || ' (bad import)' where tenant_id = 401`;
      const damaged = await digest(401);
      const { id } = await createRestore(viaProxy, {
        snapshotId: snap.snapshot_id,
        tenantId: "401",
        strategy: "overwrite",
      });
      let killedAt = 0;
      const status = await executeRestore(viaProxy, id, {
        onPhase: async (p) => {
          if (p !== "diff") return;
          const pid = await sessionOf(id);
          killedAt = Date.now();
          await terminate(pid, true);
        },
      });
      const took = Date.now() - killedAt;
      // The heartbeat runs every 200 ms here; without its check this restore would wait forever.
      assert.ok(took < 3000, `failed after ${took} ms`);
      assert.equal(status.status, "failed", JSON.stringify(status));
      assert.equal(status.error?.code, "connection_lost");
      assert.equal(await digest(401), damaged);
      await retrySucceeds(snap.snapshot_id, good);
    } finally {
      await viaProxy.end({ timeout: 1 });
      proxy.close();
    }
  },
);

dbTest(
  "cancel of a restore whose session is idle in its transaction ends the session: cancelled within seconds",
  async () => {
    const snap = await takeSnapshot(sql, { tenantId: "401" });
    const good = await digest(401);
    await sql`update public.lessons set body = body || ' (bad import)' where tenant_id = 401`;
    const damaged = await digest(401);
    const { id } = await createRestore(sql, {
      snapshotId: snap.snapshot_id,
      tenantId: "401",
      strategy: "overwrite",
    });
    // The restore's code stops between two statements (a hung await), its session idle in its
    // transaction: a cancel signal does not reach a session that runs no statement.
    let stuck = () => {};
    let reached = () => {};
    const atDiff = new Promise<void>((ok) => reached = ok);
    const running = executeRestore(sql, id, {
      onPhase: (p) => {
        if (p !== "diff") return Promise.resolve();
        reached();
        return new Promise<void>((ok) => stuck = ok);
      },
    });
    await atDiff;
    const pid = await sessionOf(id);
    const [{ state }] = await sql`select state from pg_stat_activity where pid = ${pid}`;
    assert.equal(state, "idle in transaction");
    const started = Date.now();
    const answer = await cancelRestore(sql, id, 1000);
    const took = Date.now() - started;
    assert.ok(took >= 1000 && took < 4000, `cancel took ${took} ms`);
    assert.equal(answer.status, "cancelled", JSON.stringify(answer));
    assert.equal((await sql`select from pg_stat_activity where pid = ${pid}`).length, 0);
    // The restore's own wait ended with its session, though its code is still stuck.
    assert.equal((await running).status, "cancelled");
    stuck();
    assert.equal(await digest(401), damaged);
    await retrySucceeds(snap.snapshot_id, good);
  },
);

/** A command-line restore in a child process, blocked on a row lock the test holds. */
async function childRestoreBlocked(snapshotId: string, env: Record<string, string>) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "shared/cli/restore.ts", "--snapshot", snapshotId],
    env: {
      DATABASE_URL: db.url,
      SUPABASE_DB_URL: "",
      PITR_LOCK_TIMEOUT_MS: "60000",
      PITR_HEARTBEAT_MS: "200",
      ...env,
    },
    stdout: "null",
    stderr: "null",
  }).spawn();
  let id = "";
  for (let i = 0; i < 400 && !id; i++) {
    const [r] = await sql`select id from public.backup_pitr_rollback_history
      where snapshot_id = ${snapshotId} and status = 'running'`;
    if (r) id = r.id;
    else await sleep(25);
  }
  assert.ok(id, "the command-line restore started");
  const pid = await blockedOnLock(id);
  return { child, id, pid };
}

/** Waits until the restore's session, blocked on the lock just released, is idle in its transaction. */
async function idleInTransaction(pid: number) {
  for (let i = 0; i < 200; i++) {
    const [r] = await sql`select state from pg_stat_activity where pid = ${pid}`;
    if (r?.state === "idle in transaction") return;
    await sleep(25);
  }
  throw new Error("the restore's session never went idle in its transaction");
}

dbTest(
  "a frozen process's restore idle in its transaction: the server ends the session, status turns abandoned",
  async () => {
    const { snap, good, damaged, release } = await damagedAndLocked();
    const { child, id, pid } = await childRestoreBlocked(snap.snapshot_id, {
      PITR_IDLE_IN_TRANSACTION_TIMEOUT_MS: "1000",
    });
    try {
      // Frozen (SIGSTOP): its session finishes the statement it waited on, then sits idle in
      // the transaction, holding the tenant's rows, with nobody to send the next statement.
      child.kill("SIGSTOP");
      await release();
      await idleInTransaction(pid);
      const started = Date.now();
      let status = await getStatus(sql, id);
      while (status.status === "running" && Date.now() - started < 10_000) {
        await sleep(100);
        status = await getStatus(sql, id);
      }
      assert.equal(status.status, "failed", JSON.stringify(status));
      assert.equal(status.error?.code, "abandoned");
      assert.ok(Date.now() - started < 5000, `reported after ${Date.now() - started} ms`);
      assert.equal((await sql`select from pg_stat_activity where pid = ${pid}`).length, 0);
      assert.equal(await digest(401), damaged);
      await retrySucceeds(snap.snapshot_id, good);
    } finally {
      child.kill("SIGKILL");
      await child.status;
    }
  },
);

dbTest(
  "cancel of a frozen process's restore idle in its transaction: its session is ended and it is recorded cancelled",
  async () => {
    const { snap, good, damaged, release } = await damagedAndLocked();
    const { child, id, pid } = await childRestoreBlocked(snap.snapshot_id, {});
    try {
      child.kill("SIGSTOP");
      await release();
      await idleInTransaction(pid);
      const started = Date.now();
      const answer = await cancelRestore(sql, id, 1000);
      assert.ok(Date.now() - started < 4000, `cancel took ${Date.now() - started} ms`);
      assert.equal(answer.status, "cancelled", JSON.stringify(answer));
      assert.equal(answer.error?.code, "cancelled");
      assert.equal((await sql`select from pg_stat_activity where pid = ${pid}`).length, 0);
      assert.equal(await digest(401), damaged);
      await retrySucceeds(snap.snapshot_id, good);
    } finally {
      child.kill("SIGKILL");
      await child.status;
    }
  },
);

dbTest(
  "cancel never signals a pid that another session now has: that session survives, the restore is cancelled",
  async () => {
    const { snapshot_id } = await takeSnapshot(sql, { tenantId: "402" });
    const { id } = await createRestore(sql, {
      snapshotId: snapshot_id,
      tenantId: "402",
      strategy: "overwrite",
    });
    // An unrelated session, inside a transaction and running a statement, has the pid the
    // restore recorded; only its backend_start tells it from the restore's session.
    const other = connect(db.url, { max: 1 });
    try {
      const [mine] = await other<{ pid: number; started: string }[]>`
        select pg_backend_pid() as pid, backend_start::text as started
        from pg_stat_activity where pid = pg_backend_pid()`;
      await other`begin`;
      await sql`update public.backup_pitr_rollback_history
        set status = 'running', started_at = clock_timestamp(), heartbeat_at = clock_timestamp(),
          backend_pid = ${mine.pid},
          backend_start = ${mine.started}::text::timestamptz - interval '1 hour'
        where id = ${id}`;
      const sleeping = other`select pg_sleep(2.5) as slept`.then(() => "finished", (e) => e.code);
      await sleep(200);
      const answer = await cancelRestore(sql, id, 1000);
      assert.equal(answer.status, "cancelled", JSON.stringify(answer));
      assert.equal(await sleeping, "finished", "the unrelated statement was not cancelled");
      const [still] = await other<{ pid: number; started: string }[]>`
        select pg_backend_pid() as pid, backend_start::text as started
        from pg_stat_activity where pid = pg_backend_pid()`;
      assert.deepEqual(still, mine, "the unrelated session was not terminated");
      await other`commit`;
    } finally {
      await other.end({ timeout: 1 });
    }
  },
);

dbTest(
  "the tenant's own writes while its restore runs: one to a row the restore writes refuses the restore; one elsewhere is kept, as if made after it",
  async () => {
    const lessons = async () =>
      (await sql<{ r: string }[]>`select row(l.*)::text as r from public.lessons l
        where tenant_id = 401 order by id`).map((x) => x.r);
    const snap = await takeSnapshot(sql, { tenantId: "401" });
    const good = await lessons();
    const [{ first }] = await sql<{ first: number }[]>`
      select min(id) as first from public.lessons where tenant_id = 401`;
    await sql`update public.lessons set body = body || ' (bad import)' where id = ${first}`;
    const restoreWhile = async (write: () => Promise<unknown>) => {
      const { id } = await createRestore(sql, {
        snapshotId: snap.snapshot_id,
        tenantId: "401",
        strategy: "overwrite",
      });
      // Between the diff and the writes: the rows to write are chosen, none is locked yet.
      return await executeRestore(sql, id, {
        onPhase: async (p) => {
          if (p === "writes") await write();
        },
      });
    };
    // The row the restore is about to write back changes under it: its update finds the row
    // gone from where the diff saw it, and the verification refuses what would be left.
    const refused = await restoreWhile(() =>
      sql`update public.lessons set body = 'the application wrote this' where id = ${first}`
    );
    assert.equal(refused.status, "failed");
    assert.equal(refused.error?.code, "verification_failed");
    const after = await lessons();
    assert.deepEqual(after.slice(1), good.slice(1));
    assert.match(after[0], /the application wrote this/);
    // A new row of the tenant, committed while the restore runs: the restore completes and the
    // row stays, as a write committed just after the restore would.
    const [{ added }] = await sql<{ added: number }[]>`select nextval(pg_get_serial_sequence(
      'public.lessons', 'id'))::int + 1000 as added`;
    const kept = await restoreWhile(() =>
      sql`insert into public.lessons (id, tenant_id, body) values (${added}, 401, 'new lesson')`
    );
    assert.equal(kept.status, "completed", JSON.stringify(kept.error));
    assert.deepEqual(await lessons(), [...good, `(${added},401,"new lesson")`]);
    await sql`delete from public.lessons where id = ${added}`;
  },
);

cleanup(db);
