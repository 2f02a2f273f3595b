// The change log's maintenance job: partitions weeks ahead, expired days detached and dropped,
// rows of the default partition moved or expired, its status view, and the lock behaviour: while a
// restore's transaction holds a lock on the log, another tenant's writes never wait behind the job.
import assert from "node:assert/strict";
import { maintainChangeLog } from "../shared/cli/maintain.ts";
import { Unprocessable } from "../shared/restore/errors.ts";
import { planAt } from "../shared/restore/point_in_time.ts";
import { cleanup, dbTest, testDatabase } from "./_db.ts";

const db = await testDatabase("maintenance");
const sql = db.sql;
const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));
const INSUFFICIENT_PRIVILEGE = "42501";

await sql`select public.seed_tenant(701, 5), public.seed_tenant(702, 5)`;
await sql`select pitr.capture_enable('public.users')`;

/** The days (UTC, YYYY-MM-DD) that have a partition of the log, from the catalog. */
async function partitionDays(): Promise<string[]> {
  const rows = await sql<{ day: string }[]>`
    select to_char(pitr.change_partition_day(c.relname), 'YYYY-MM-DD') as day
    from pg_inherits i join pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'pitr.changes'::regclass and pitr.change_partition_day(c.relname) is not null
    order by 1`;
  return rows.map((r) => r.day);
}

async function utcDay(offset: number): Promise<string> {
  const [{ d }] = await sql<{ d: string }[]>`
    select to_char((now() at time zone 'UTC')::date + ${offset}::int, 'YYYY-MM-DD') as d`;
  return d;
}

async function lastRun() {
  const [r] = await sql<
    {
      outcome: string;
      made: number;
      detached: number;
      dropped: number;
      moved_rows: string;
      deleted_rows: string;
      lock_timeouts: number;
      message: string | null;
    }[]
  >`select * from pitr.log_maintenance_runs order by id desc limit 1`;
  return { ...r, moved_rows: Number(r.moved_rows), deleted_rows: Number(r.deleted_rows) };
}

/** An expired day's partition, made the old way, with one row in it. */
async function expiredDay(day: string) {
  const name = `changes_${day.replaceAll("-", "")}`;
  await sql`select pitr.ensure_change_partitions(${day}::date, 1)`;
  await sql`insert into pitr.changes (changed_at, tenant_id, relid, op, pk)
    values (${day + " 12:00+00"}::timestamptz, '701', 'public.users'::regclass, 'I', '-1')`;
  return name;
}

dbTest(
  "the job keeps a partition for every day from today to log_days_ahead after it",
  async () => {
    const status = await maintainChangeLog(sql);
    assert.equal(status.last_outcome, "ok");
    const days = await partitionDays();
    const [{ ahead }] = await sql<{ ahead: number }[]>`
    select log_days_ahead as ahead from pitr.settings`;
    assert.equal(ahead, 28);
    for (let i = 0; i <= ahead; i++) assert.ok(days.includes(await utcDay(i)), `day +${i}`);
    assert.equal(status.days_ahead, ahead);
    assert.equal(status.newest_partition_day instanceof Date, true);
    // A longer horizon is made on the next run, and the view follows the catalog.
    await sql`update pitr.settings set log_days_ahead = 40`;
    const after = await maintainChangeLog(sql);
    const run = await lastRun();
    assert.equal(run.outcome, "ok");
    assert.equal(run.made, 12);
    assert.equal(after.days_ahead, 40);
    assert.ok((await partitionDays()).includes(await utcDay(40)));
    // Every partition is private and its stamp trigger fires in every session.
    const [{ open, triggers }] = await sql<{ open: string; triggers: string }[]>`
    select count(*) filter (where has_table_privilege(r, c.oid, 'SELECT')) as open,
      count(*) filter (where not exists (select from pg_trigger t where t.tgrelid = c.oid
        and t.tgname = 'changes_commit_stamp' and t.tgenabled = 'A')) as triggers
    from pg_inherits i join pg_class c on c.oid = i.inhrelid
    cross join unnest(array['anon', 'authenticated', 'service_role']) r
    where i.inhparent = 'pitr.changes'::regclass and c.relname ~ '^changes_\\d{8}$'`;
    assert.equal(Number(open), 0);
    assert.equal(Number(triggers), 0);
    await sql`update pitr.settings set log_days_ahead = 28`;
  },
);

dbTest(
  "expired days are detached and dropped with the signatures of their schema changes, default-partition rows moved or expired, and a moment in a dropped day is refused",
  async () => {
    const expired = await expiredDay("2020-01-05");
    // A day two days back without its partition: its rows went to the default partition.
    const twoBack = await utcDay(-2);
    await sql`select pitr.detach_change_partition(${`changes_${twoBack.replaceAll("-", "")}`})`;
    await sql`select pitr.drop_detached_change(${`changes_detached_${
      twoBack.replaceAll("-", "")
    }`})`;
    await sql`insert into pitr.changes (changed_at, tenant_id, relid, op, pk)
      values (${twoBack + " 08:00+00"}::timestamptz, '701', 'public.users'::regclass, 'I', '-2'),
        ('2020-01-09 08:00+00', '701', 'public.users'::regclass, 'I', '-3')`;
    const [{ inDefault }] = await sql<{ inDefault: string }[]>`
      select count(*) as "inDefault" from pitr.changes_default`;
    assert.equal(Number(inDefault), 2);
    // A schema change recorded in the expired day and one today, each with the signature from
    // before it: the first leaves with its day, the second stays.
    const schemaChange = async (at: string) => {
      const [{ seq }] = await sql<{ seq: string }[]>`
        insert into pitr.changes (changed_at, relid, op, old_row)
        values (${at}::timestamptz, 'public.users'::regclass, 'S', 'ALTER TABLE (test)')
        returning seq`;
      await sql`insert into pitr.schema_changes (relid, seq, shape_before)
        values ('public.users'::regclass, ${seq}, '{}')`;
      return seq;
    };
    const oldChange = await schemaChange("2020-01-05 13:00+00");
    const newChange = await schemaChange(new Date().toISOString());

    const status = await maintainChangeLog(sql);
    const run = await lastRun();
    assert.deepEqual(
      {
        outcome: run.outcome,
        detached: run.detached,
        dropped: run.dropped,
        moved: run.moved_rows,
        deleted: run.deleted_rows,
      },
      { outcome: "ok", detached: 1, dropped: 1, moved: 1, deleted: 1 },
    );
    const [{ gone, detachedGone }] = await sql<{ gone: boolean; detachedGone: boolean }[]>`
      select to_regclass(${"pitr." + expired}) is null as gone,
        to_regclass('pitr.changes_detached_20200105') is null as "detachedGone"`;
    assert.equal(gone, true);
    assert.equal(detachedGone, true);
    const kept = await sql<{ seq: string }[]>`
      select seq from pitr.schema_changes where seq in (${oldChange}, ${newChange})`;
    assert.deepEqual(kept.map((r) => r.seq), [newChange]);
    await sql`delete from pitr.changes where seq = ${newChange}`;
    await sql`delete from pitr.schema_changes where seq = ${newChange}`;
    // The moved row now sits in its day's partition, not in the default one.
    const [moved] = await sql<{ part: string }[]>`
      select tableoid::regclass::text as part from pitr.changes where pk = '-2'`;
    assert.equal(moved.part, `pitr.changes_${twoBack.replaceAll("-", "")}`);
    assert.equal(Number(status.default_rows), 0);
    assert.equal(Number(status.detached_pending), 0);
    assert.equal(
      (status.oldest_partition_day as Date).toISOString().slice(0, 10),
      twoBack,
    );
    // The log is complete only after the newest dropped data: the default partition's rows
    // expired up to the cutoff (later than the dropped day's end).
    const [{ since, cutoffish }] = await sql<{ since: Date; cutoffish: boolean }[]>`
      select complete_since as since,
        complete_since > now() - retention - interval '1 minute' as cutoffish from pitr.settings`;
    assert.ok(since.getTime() > Date.parse("2020-01-06T00:00:00Z"));
    assert.equal(cutoffish, true);
    await assert.rejects(
      planAt(sql, { tenantId: "701", at: "2020-01-05T18:00:00Z" }),
      (e) => e instanceof Unprocessable && e.code === "outside_retention",
    );
  },
);

dbTest(
  "control: a DROP of a partition without lock_timeout queues behind an open restore, and a writer of another tenant queues behind it",
  async () => {
    const expired = await expiredDay("2020-02-01");
    const { writerDone, holderReleasing } = await underOpenTransaction(async (other) => {
      // The old drop_expired_changes: DROP TABLE of a partition, no lock_timeout.
      const drop = other`drop table ${other("pitr." + expired)}`.execute();
      await sleep(150); // it is queued now
      return drop;
    });
    // The writer finished only after the open transaction let go: it waited for all of it.
    assert.ok(
      writerDone.some((t) => t > holderReleasing),
      "without lock_timeout the writer waits for the open transaction",
    );
  },
);

dbTest(
  "while a restore's transaction holds the log, the job gives up within lock_timeout and retries; another tenant's writes never wait for the transaction",
  async () => {
    const expired = await expiredDay("2020-03-01");
    await sql`update pitr.settings set maintenance_attempts = 3`;
    let during: Awaited<ReturnType<typeof lastRun>> | undefined;
    const { writerDone, holderReleasing, latencies } = await underOpenTransaction(async () => {
      await maintainChangeLog(sql);
      during = await lastRun();
    });
    // Every write of the other tenant finished while the transaction was still open.
    assert.ok(writerDone.length >= 5, `the writer wrote ${writerDone.length} times`);
    assert.ok(
      writerDone.every((t) => t < holderReleasing),
      "a writer waited for the open transaction",
    );
    console.log(
      `writer latency while the job retried: max ${
        Math.max(...latencies).toFixed(1)
      } ms over ${latencies.length} updates`,
    );
    // The job gave up on the expired day after its attempts, and said so.
    assert.equal(during!.outcome, "partial");
    assert.equal(during!.lock_timeouts, 3);
    assert.match(during!.message!, /detach changes_20200301: the log stayed locked for 3 attempts/);
    const [{ still }] = await sql<{ still: boolean }[]>`
      select exists (select from pg_inherits where inhrelid = ${
      "pitr." + expired
    }::regclass) as still`;
    assert.equal(still, true);
    const [{ outcome }] = await sql<{ outcome: string }[]>`
      select last_outcome as outcome from pitr.log_maintenance_status`;
    assert.equal(outcome, "partial");
    // The transaction is gone: the next run detaches and drops the day.
    await maintainChangeLog(sql);
    const after = await lastRun();
    assert.equal(after.outcome, "ok");
    assert.equal(after.detached, 1);
    assert.equal(after.dropped, 1);
    const [{ gone }] = await sql<{ gone: boolean }[]>`
      select to_regclass(${"pitr." + expired}) is null as gone`;
    assert.equal(gone, true);
    await sql`update pitr.settings set maintenance_attempts = 12`;
  },
);

dbTest(
  "partitions are made ahead while a restore's transaction holds the log: attaching never waits for it",
  async () => {
    await sql`update pitr.settings set log_days_ahead = 50`;
    let run: Awaited<ReturnType<typeof lastRun>> | undefined;
    const { writerDone, holderReleasing } = await underOpenTransaction(async () => {
      await maintainChangeLog(sql);
      run = await lastRun();
    });
    assert.equal(run!.outcome, "ok");
    assert.equal(run!.made, 10);
    assert.equal(run!.lock_timeouts, 0);
    assert.ok(writerDone.every((t) => t < holderReleasing));
    await sql`update pitr.settings set log_days_ahead = 28`;
  },
);

dbTest("one run at a time: a run that finds another in progress does nothing", async () => {
  const [{ before }] = await sql<{ before: string }[]>`
    select count(*) as before from pitr.log_maintenance_runs`;
  const other = await sql.reserve();
  try {
    await other`select pg_advisory_lock(hashtext('pitr:log-maintenance'))`;
    await sql`call pitr.maintain_change_log()`.simple();
    const [{ during }] = await sql<{ during: string }[]>`
      select count(*) as during from pitr.log_maintenance_runs`;
    assert.equal(Number(during), Number(before));
  } finally {
    await other`select pg_advisory_unlock(hashtext('pitr:log-maintenance'))`;
    other.release();
  }
  await sql`call pitr.maintain_change_log()`.simple();
  const [{ after }] = await sql<{ after: string }[]>`
    select count(*) as after from pitr.log_maintenance_runs`;
  assert.equal(Number(after), Number(before) + 1);
});

dbTest("the runs table, the status view and the job are closed to every API role", async () => {
  const [r] = await sql<{ readable: boolean; callable: boolean }[]>`
    select bool_or(has_table_privilege(role, rel, 'SELECT')) as readable,
      bool_or(has_function_privilege(role, 'pitr.maintain_change_log()'::regprocedure, 'EXECUTE'))
        as callable
    from unnest(array['anon', 'authenticated', 'service_role']) role
    cross join unnest(array['pitr.log_maintenance_runs'::regclass,
      'pitr.log_maintenance_status'::regclass]) rel`;
  assert.deepEqual({ ...r }, { readable: false, callable: false });
  for (const role of ["anon", "authenticated"]) {
    const e = await sql.begin(async (tx) => {
      await tx`select set_config('role', ${role}, true)`;
      await tx`select * from pitr.log_maintenance_status`;
    }).catch((e) => e);
    assert.equal((e as { code?: string }).code, INSUFFICIENT_PRIVILEGE, role);
  }
});

/**
 * Runs `during` while a transaction that wrote tenant 701's captured rows stays open (as a restore
 * or a drill does) for 3 s, with a writer of tenant 702 updating one row every 20 ms throughout.
 * Returns when each write finished and when the open transaction began to let go.
 */
async function underOpenTransaction(during: (other: typeof sql) => Promise<unknown>) {
  let holding!: () => void;
  const held = new Promise<void>((ok) => holding = ok);
  let holderReleasing = Infinity;
  const holder = sql.begin(async (tx) => {
    await tx`update public.users set display_name = display_name where tenant_id = 701`;
    holding();
    await sleep(3000);
    holderReleasing = performance.now();
  });
  await held;
  const writerDone: number[] = [];
  const latencies: number[] = [];
  let writing = true;
  const writer = (async () => {
    while (writing) {
      const t0 = performance.now();
      await sql`update public.users set display_name = display_name || ''
        where email = 'u1@t702.example'`;
      const t1 = performance.now();
      writerDone.push(t1);
      latencies.push(t1 - t0);
      await sleep(20);
    }
  })();
  const work = during(sql);
  await Promise.race([work, sleep(2000)]);
  writing = false;
  await writer;
  await holder;
  await work;
  return { writerDone, holderReleasing, latencies };
}

cleanup(db);
