// Sessions kept between transactions (shared/db/idle.ts): the next transaction gets the warm
// backend with nothing of the last one left on it; a session lost, while kept or in its
// transaction, is never handed out again; kept sessions stay within the budget, close after
// PITR_SESSION_IDLE_MS and with their client; and a cancel never reaches the transaction a kept
// session serves after a restore's.
import assert from "node:assert/strict";
import { connect, idleSessionsOf, type Sql } from "../shared/db/client.ts";
import { transaction } from "../shared/db/transaction.ts";
import { cancelRestore, createRestore } from "../shared/restore/history.ts";
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
  "a session lost in its transaction, or whose transaction could not end, is closed, never kept",
  async () => {
    const { sql: c, application } = client("lost");
    try {
      const pid = await transaction(c, pidOf);
      await assert.rejects(
        transaction(c, async (tx) => {
          await tx`select pg_terminate_backend(pg_backend_pid())`;
        }),
      );
      assert.equal(idleSessionsOf(c).size, 0);
      await gone(pid);
      // A failed statement is rolled back and the session kept: it is healthy.
      await assert.rejects(transaction(c, (tx) => tx`select 1 / 0`), /division by zero/);
      assert.equal(idleSessionsOf(c).size, 1);
      const [kept] = await connections(application);
      assert.equal(await transaction(c, pidOf), kept);
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
  "cancel never signals the session of a restore that has ended, now in another transaction",
  async () => {
    const { snapshot_id } = await takeSnapshot(sql, { tenantId: "901" });
    const { id } = await createRestore(sql, {
      snapshotId: snapshot_id,
      tenantId: "901",
      strategy: "overwrite",
    });
    // The restore's session (its pid and backend_start exactly) after the restore's transaction
    // ended, kept, now in the transaction of other work: only the transaction tells them apart.
    const other = connect(db.url, { max: 1 });
    try {
      const [mine] = await other<{ pid: number; started: string }[]>`
        select pg_backend_pid() as pid, backend_start::text as started
        from pg_stat_activity where pid = pg_backend_pid()`;
      const ended = await other.begin(async (tx) =>
        (await tx<{ txid: string }[]>`select txid_current()::text as txid`)[0].txid
      );
      await other`begin`;
      await other`select txid_current()`;
      await sql`update public.backup_pitr_rollback_history
        set status = 'running', started_at = clock_timestamp(), heartbeat_at = clock_timestamp(),
          backend_pid = ${mine.pid}, backend_start = ${mine.started}::text::timestamptz,
          transaction_ids = array[${ended}::text]
        where id = ${id}`;
      const sleeping = other`select pg_sleep(2.5) as slept`.then(() => "finished", (e) => e.code);
      await sleep(200);
      const answer = await cancelRestore(sql, id, 1000);
      assert.equal(answer.status, "cancelled", JSON.stringify(answer));
      assert.equal(
        await sleeping,
        "finished",
        "the other transaction's statement was not cancelled",
      );
      const [still] = await other<{ pid: number; started: string }[]>`
        select pg_backend_pid() as pid, backend_start::text as started
        from pg_stat_activity where pid = pg_backend_pid()`;
      assert.deepEqual(still, mine, "the session was not terminated");
      await other`commit`;
    } finally {
      await other.end({ timeout: 1 });
    }
  },
);

cleanup(db);
