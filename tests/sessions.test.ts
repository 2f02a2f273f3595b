// Sessions kept between transactions (shared/db/idle.ts): the next transaction gets the warm
// backend with nothing of the last one left on it; a session lost, while kept or in its
// transaction, is never handed out again; kept sessions stay within the budget, close after
// PITR_SESSION_IDLE_MS and with their client; and a session is kept only after a COMMIT, so that
// a failed restore's session, found by a cancel while its history row still says running, is gone.
import assert from "node:assert/strict";
import { connect, idleSessionsOf, type Sql } from "../shared/db/client.ts";
import { transaction } from "../shared/db/transaction.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { createRestore } from "../shared/restore/history.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { cleanup, dbTest, testDatabase } from "./_db.ts";

const db = await testDatabase("sessions");
const sql = db.sql;
await sql`select public.seed_tenant(t, 5) from unnest(array[901]::bigint[]) t`;

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

/** A client of its own, with an application_name by which its connections are counted. */
function client(name: string, max = 4): { sql: Sql; application: string } {
  const application = `pitr_${name}_${crypto.randomUUID().slice(0, 6)}`;
  return { sql: connect(db.url, { max, application }), application };
}

async function connections(application: string): Promise<number[]> {
  const rows = await sql<{ pid: number }[]>`select pid from pg_stat_activity
    where application_name = ${application} and backend_type = 'client backend'`;
  return rows.map((r) => r.pid);
}

const pidOf = async (tx: Sql) =>
  (await tx<{ pid: number }[]>`select pg_backend_pid() as pid`)[0].pid;

async function gone(pid: number) {
  for (let i = 0; i < 200; i++) {
    if ((await sql`select from pg_stat_activity where pid = ${pid}`).length === 0) return;
    await sleep(10);
  }
  throw new Error(`backend ${pid} never ended`);
}

dbTest(
  "the next transaction runs on the kept backend, with nothing of the last one left on it",
  async () => {
    const { sql: c, application } = client("kept");
    try {
      const first = await transaction(c, async (tx) => {
        // What a snapshot leaves on its session (restore/snapshot.ts consistentRead), and more.
        await tx`select set_config('lock_timeout', '1234ms', false),
          set_config('statement_timeout', '4321ms', false),
          pg_advisory_lock(hashtext('pitr:tenant'), hashtext('901'))`;
        await tx`create temp table leftover (x int)`;
        return await pidOf(tx);
      });
      assert.equal(idleSessionsOf(c).size, 1);
      const second = await transaction(c, async (tx) => {
        const [s] = await tx<
          {
            pid: number;
            lock_timeout: string;
            statement_timeout: string;
            locks: number;
            leftover: string | null;
            application: string;
          }[]
        >`select pg_backend_pid() as pid, current_setting('lock_timeout') as lock_timeout,
            current_setting('statement_timeout') as statement_timeout,
            (select count(*)::int from pg_locks where locktype = 'advisory'
              and pid = pg_backend_pid()) as locks,
            to_regclass('pg_temp.leftover')::text as leftover,
            current_setting('application_name') as application`;
        return s;
      });
      assert.equal(second.pid, first, "the kept backend");
      assert.deepEqual(
        {
          lock_timeout: second.lock_timeout,
          statement_timeout: second.statement_timeout,
          locks: second.locks,
          leftover: second.leftover,
          application: second.application,
        },
        { lock_timeout: "0", statement_timeout: "0", locks: 0, leftover: null, application },
      );
      // The tenant's lock is free for anyone else the moment the first transaction gave it up.
      const [{ free }] = await sql<{ free: boolean }[]>`
        select pg_try_advisory_lock(hashtext('pitr:tenant'), hashtext('901')) as free`;
      assert.ok(free);
      await sql`select pg_advisory_unlock(hashtext('pitr:tenant'), hashtext('901'))`;
    } finally {
      await c.end({ timeout: 5 });
    }
    assert.deepEqual(await connections(application), [], "ending the client closed the kept one");
  },
);

dbTest(
  "a kept session whose backend ended while kept is replaced: every next transaction succeeds on a new backend",
  async () => {
    const { sql: c, application } = client("replaced");
    try {
      let pid = await transaction(c, pidOf);
      for (let round = 0; round < 5; round++) {
        // Without waiting for the client to see it: the next BEGIN may go to a closed socket.
        await sql`select pg_terminate_backend(${pid})`;
        if (round % 2 === 1) await gone(pid);
        const next = await transaction(c, pidOf);
        assert.notEqual(next, pid, `round ${round}`);
        pid = next;
      }
      assert.deepEqual(await connections(application), [pid]);
    } finally {
      await c.end({ timeout: 5 });
    }
  },
);

dbTest(
  "a session lost in its transaction, or whose transaction failed, is closed, never kept",
  async () => {
    const { sql: c } = client("lost");
    try {
      const pid = await transaction(c, pidOf);
      await assert.rejects(
        transaction(c, async (tx) => {
          await tx`select pg_terminate_backend(pg_backend_pid())`;
        }),
      );
      assert.equal(idleSessionsOf(c).size, 0);
      await gone(pid);
      const failing = await transaction(c, pidOf);
      await assert.rejects(
        transaction(c, async (tx) => {
          assert.equal(await pidOf(tx), failing, "the kept session");
          await tx`select 1 / 0`;
        }),
        /division by zero/,
      );
      assert.equal(idleSessionsOf(c).size, 0);
      await gone(failing);
    } finally {
      await c.end({ timeout: 5 });
    }
  },
);

dbTest(
  "kept sessions never outnumber the budget's sessions, and close after PITR_SESSION_IDLE_MS unused",
  async () => {
    Deno.env.set("PITR_SESSION_IDLE_MS", "400");
    // A budget of 4: a pool of 2 and 2 sessions.
    const { sql: c, application } = client("budget", 4);
    Deno.env.delete("PITR_SESSION_IDLE_MS");
    try {
      const pids = new Set<number>();
      await Promise.all(Array.from({ length: 20 }, () =>
        transaction(c, async (tx) => {
          pids.add(await pidOf(tx));
          await tx`select pg_sleep(0.01)`;
        })));
      assert.ok(pids.size <= 2, `${pids.size} backends served 20 transactions`);
      assert.equal(idleSessionsOf(c).size, pids.size);
      const open = await connections(application);
      assert.ok(open.length <= 4, `${open.length} connections`);
      await sleep(900);
      assert.equal(idleSessionsOf(c).size, 0);
      for (const pid of pids) await gone(pid);
    } finally {
      await c.end({ timeout: 5 });
    }
  },
);

dbTest(
  "PITR_SESSION_IDLE_MS=0 keeps no session: each transaction opens and closes its own",
  async () => {
    Deno.env.set("PITR_SESSION_IDLE_MS", "0");
    const { sql: c } = client("none");
    Deno.env.delete("PITR_SESSION_IDLE_MS");
    try {
      const first = await transaction(c, pidOf);
      assert.equal(idleSessionsOf(c).size, 0);
      await gone(first);
      assert.notEqual(await transaction(c, pidOf), first);
    } finally {
      await c.end({ timeout: 5 });
    }
  },
);

dbTest(
  "a failed restore's session is closed with its transaction; a completed restore's is kept",
  async () => {
    const { sql: c } = client("restore");
    const holder = await sql.reserve();
    try {
      const { snapshot_id } = await takeSnapshot(c, { tenantId: "901" });
      await sql`update public.lessons set body = 'damaged' where tenant_id = 901`;
      await holder`begin`;
      await holder`select 1 from public.lessons where tenant_id = 901 for update`;
      const failed = await createRestore(c, {
        snapshotId: snapshot_id,
        tenantId: "901",
        strategy: "overwrite",
      });
      const status = await executeRestore(c, failed.id, { lockTimeoutMs: 200 });
      assert.equal(status.status, "failed", JSON.stringify(status));
      assert.equal(status.error?.code, "lock_timeout");
      // Its history row said running until the failure was recorded, after the rollback: the
      // session it names (pid and backend_start) must not be serving other work by then.
      const [{ backend_pid }] = await sql<{ backend_pid: number }[]>`
        select backend_pid from public.backup_pitr_rollback_history where id = ${failed.id}`;
      assert.equal(idleSessionsOf(c).size, 0);
      await gone(backend_pid);
      await holder`rollback`;
      const done = await createRestore(c, {
        snapshotId: snapshot_id,
        tenantId: "901",
        strategy: "overwrite",
      });
      assert.equal((await executeRestore(c, done.id)).status, "completed");
      assert.equal(idleSessionsOf(c).size, 1);
    } finally {
      holder.release();
      await c.end({ timeout: 5 });
    }
  },
);

cleanup(db);
