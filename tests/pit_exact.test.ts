// Point in time is exact: for each kind of value, session setting, schema change and transaction
// that the former jsonb log got wrong, a table is changed after a moment and restored to it, and
// the restored rows' text must equal the rows' text at that moment, character for character.
import assert from "node:assert/strict";
import { createRestore } from "../shared/restore/history.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { snapshotAt, validateAt } from "../shared/restore/point_in_time.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { validateSnapshot } from "../shared/restore/validate.ts";
import { Unprocessable } from "../shared/restore/errors.ts";
import { connect, type Sql } from "../shared/db/client.ts";
import { cleanup, clearMoment, dbTest, testDatabase } from "./_db.ts";

const db = await testDatabase("pit_exact");
const sql = db.sql;
const now = () => clearMoment(sql);

/** A table's rows of one tenant as text, sorted: what "exactly as at the moment" compares. */
async function rowsOf(table: string, tenant: number): Promise<string[]> {
  const [{ rows }] = await sql<{ rows: string[] }[]>`
    select coalesce(array_agg(row(t.*)::text order by row(t.*)::text), '{}') as rows
    from ${sql(table)} t where t.tenant_id = ${tenant}`;
  return rows;
}

/** Restores the tenant's tables to `at`, through `pool` (this file's own by default). */
async function restoreTo(tenant: number, at: string, tables: string[], pool: Sql = sql) {
  const snapshot = await snapshotAt(pool, { tenantId: String(tenant), at, tables });
  const { id } = await createRestore(pool, {
    snapshotId: snapshot.snapshot_id,
    tenantId: String(tenant),
    strategy: "overwrite",
  });
  const status = await executeRestore(pool, id);
  assert.equal(status.status, "completed", JSON.stringify(status.error));
}

/** A pool whose every session starts with these settings (startup parameters in the URL). */
function poolWith(settings: Record<string, string>): Sql {
  return connect(`${db.url}?${new URLSearchParams(settings)}`, { max: 4 });
}

/** Runs fn on one session with the given settings, as an application's session would have them. */
async function asSession(settings: Record<string, string>, fn: (s: Sql) => Promise<unknown>) {
  const session = await sql.reserve();
  try {
    for (const [name, value] of Object.entries(settings)) {
      await session`select set_config(${name}, ${value}, false)`;
    }
    await fn(session as unknown as Sql);
  } finally {
    await session`reset all`;
    session.release();
  }
}

async function captured(ddl: string, table: string) {
  await sql.unsafe(ddl); // the test's own fixed DDL text
  await sql`select pitr.capture_enable(${table})`;
}

dbTest("float -0, NaN, infinities and 17-digit values are restored exactly", async () => {
  await captured(
    `create table public.pit_float (id int primary key, tenant_id bigint not null, f float8,
      r real, fs float8[])`,
    "public.pit_float",
  );
  await sql`insert into public.pit_float values
    (1, 1, '-0', '-0', '{-0,0}'), (2, 1, 'NaN', 'Infinity', '{-Infinity}'),
    (3, 1, 0.1::float8 + 0.2::float8, 1.0000001, '{4.9e-324, 1.7976931348623157e308}'),
    (4, 1, 2.2250738585072014e-308, 3.4e38, null)`;
  const at = await now();
  const before = await rowsOf("public.pit_float", 1);
  assert.ok(before.some((r) => r.startsWith("(1,1,-0,-0,")), before.join(" "));
  await sql`update public.pit_float set f = 1, r = 1, fs = '{1}'`;
  await sql`delete from public.pit_float where id = 4`;
  await restoreTo(1, at, ["public.pit_float"]);
  assert.deepEqual(await rowsOf("public.pit_float", 1), before);
});

dbTest("arrays keep their lower bounds, dimensions, NULLs and 'NULL' strings", async () => {
  await captured(
    `create table public.pit_array (id int primary key, tenant_id bigint not null, a int[],
      m int[], t text[])`,
    "public.pit_array",
  );
  await sql`insert into public.pit_array values
    (1, 2, '[0:2]={1,2,3}', '[2:3][-1:0]={{1,2},{3,4}}', '{NULL,"NULL","",x}'),
    (2, 2, '{}', '{{5}}', '[5:5]={"a,b"}')`;
  const at = await now();
  const before = await rowsOf("public.pit_array", 2);
  assert.ok(before.some((r) => r.includes("[0:2]={1,2,3}")));
  await sql`update public.pit_array set a = '{9}', m = '{9}', t = '{9}'`;
  await restoreTo(2, at, ["public.pit_array"]);
  assert.deepEqual(await rowsOf("public.pit_array", 2), before);
});

dbTest("json text is kept as written: spacing, key order and duplicate keys", async () => {
  await captured(
    `create table public.pit_json (id int primary key, tenant_id bigint not null, j json, b jsonb)`,
    "public.pit_json",
  );
  await sql`insert into public.pit_json values
    (1, 3, '{"b":1,  "a" : [1,2 ], "b": 2}', '{"n": 1.50, "s": "tab\\tend"}'),
    (2, 3, '  "just text"  ', 'null')`;
  const at = await now();
  const before = await rowsOf("public.pit_json", 3);
  await sql`update public.pit_json set j = '{}', b = '{}'`;
  await sql`delete from public.pit_json where id = 2`;
  await restoreTo(3, at, ["public.pit_json"]);
  assert.deepEqual(await rowsOf("public.pit_json", 3), before);
  const [{ j }] = await sql<{ j: string }[]>`select j::text from public.pit_json where id = 1`;
  assert.equal(j, '{"b":1,  "a" : [1,2 ], "b": 2}');
});

dbTest("a writer with extra_float_digits = 0 logs its old rows unrounded", async () => {
  await captured(
    `create table public.pit_digits (id int primary key, tenant_id bigint not null, f float8,
      t timestamptz, i interval, by bytea, d date)`,
    "public.pit_digits",
  );
  await sql`insert into public.pit_digits values
    (1, 4, 0.1::float8 + 0.2::float8, '2026-03-04 05:06:07.123456+00', '-1 day 02:03:04.5',
      '\\x00ff', '2026-02-03'),
    (2, 4, 1.0 / 3.0, '1999-12-31 23:59:59.999999+00', '1 year -2 mons', '\\x', '0044-03-15 BC')`;
  const at = await now();
  const before = await rowsOf("public.pit_digits", 4);
  // Every setting that shapes how a value is written, set the other way round by the writer.
  await asSession({
    extra_float_digits: "0",
    TimeZone: "Pacific/Chatham",
    DateStyle: "SQL, DMY",
    IntervalStyle: "sql_standard",
    bytea_output: "escape",
  }, async (s) => {
    await s`update public.pit_digits set f = 0, t = now(), i = '0', by = '\\x01'`;
    await s`delete from public.pit_digits where id = 2`;
  });
  // The restore's own sessions have other settings again (DateStyle left ISO: the client reads
  // the service's own timestamps in it).
  const odd = poolWith({
    extra_float_digits: "-15",
    IntervalStyle: "iso_8601",
    TimeZone: "America/St_Johns",
    lc_monetary: "C.utf8",
  });
  try {
    await restoreTo(4, at, ["public.pit_digits"], odd);
  } finally {
    await odd.end();
  }
  assert.deepEqual(await rowsOf("public.pit_digits", 4), before);
});

dbTest(
  "a timestamptz primary key logged under another TimeZone matches its row when rebuilt",
  async () => {
    await captured(
      `create table public.pit_tskey (at timestamptz primary key, tenant_id bigint not null,
        v text)`,
      "public.pit_tskey",
    );
    await sql`insert into public.pit_tskey values
      ('2026-01-01 10:00:00.123456+00', 5, 'a'), ('2026-01-01 11:00:00+00', 5, 'b'),
      ('2026-07-01 12:30:00+00', 5, 'c')`;
    const at = await now();
    const before = await rowsOf("public.pit_tskey", 5);
    await asSession({ TimeZone: "Asia/Kathmandu" }, async (s) => {
      await s`update public.pit_tskey set v = 'changed'`;
      await s`delete from public.pit_tskey where v = 'changed' and at > '2026-06-01'`;
      await s`insert into public.pit_tskey values ('2026-01-02 00:00:00+05:45', 5, 'new')`;
    });
    await restoreTo(5, at, ["public.pit_tskey"]);
    assert.deepEqual(await rowsOf("public.pit_tskey", 5), before);
  },
);

dbTest(
  "keys are matched by value: a numeric key rewritten with another scale is rebuilt and restored with its text",
  async () => {
    await captured(
      `create table public.pit_numkey (k numeric primary key, tenant_id bigint not null, v text)`,
      "public.pit_numkey",
    );
    await sql`insert into public.pit_numkey values (1.0, 6, 'one'), (2, 6, 'two')`;
    const at = await now();
    const before = await rowsOf("public.pit_numkey", 6);
    // Equal keys, other text: the same row to the table's unique index, changed once.
    await sql`update public.pit_numkey set k = 1.00, v = 'rescaled' where k = 1`;
    // The state at `at` as built from the log, read from the point-in-time snapshot's store.
    const s = await snapshotAt(sql, { tenantId: "6", at, tables: ["public.pit_numkey"] });
    const [t] = await sql<{ store_table: string; store_tenant: string; seq: string }[]>`
    select store_table, store_tenant, seq from pitr.backup_snapshot_tables
    where snapshot_id = ${s.snapshot_id}`;
    const [{ rows }] = await sql<{ rows: string[] }[]>`
    select array_agg(row(x.k, x.tenant_id, x.v)::text order by row(x.k, x.tenant_id, x.v)::text)
      as rows
    from ${sql("pitr_store." + t.store_table)} x
    where x.pitr_tenant = ${t.store_tenant} and x.pitr_from <= ${t.seq}
      and (x.pitr_to is null or x.pitr_to > ${t.seq})`;
    assert.deepEqual(rows, before);
    // And the restore writes the key's text back too (1.00 is equal to 1.0, not identical).
    await restoreTo(6, at, ["public.pit_numkey"]);
    assert.deepEqual(await rowsOf("public.pit_numkey", 6), before);
    assert.ok(before.includes("(1.0,6,one)"), before.join(" "));
  },
);

dbTest(
  "column renamed after at (a data column and the key): the moment restores exactly",
  async () => {
    await captured(
      `create table public.pit_rename (id bigint primary key, tenant_id bigint not null,
        note text, qty int)`,
      "public.pit_rename",
    );
    await sql`insert into public.pit_rename values (1, 7, 'first', 1), (2, 7, 'second', 2)`;
    const at = await now();
    const before = await rowsOf("public.pit_rename", 7);
    await sql`update public.pit_rename set qty = qty + 10`;
    await sql`alter table public.pit_rename rename column note to remark`;
    await sql`alter table public.pit_rename rename column id to ident`;
    // The application's writes go on with the new names, and are logged.
    await sql`update public.pit_rename set remark = 'after rename' where ident = 1`;
    await sql`insert into public.pit_rename (ident, tenant_id, remark, qty) values (3, 7, 'new', 3)`;
    await sql`delete from public.pit_rename where ident = 2`;
    const [{ n }] = await sql<{ n: string }[]>`select count(*) as n from pitr.changes
      where relid = 'public.pit_rename'::regclass and changed_at > ${at}::text::timestamptz`;
    assert.equal(Number(n), 5);
    await restoreTo(7, at, ["public.pit_rename"]);
    assert.deepEqual(await rowsOf("public.pit_rename", 7), before);
  },
);

dbTest("a captured table renamed keeps capturing, TRUNCATE included, and restores", async () => {
  await captured(
    `create table public.pit_table_old (id int primary key, tenant_id bigint not null, v text)`,
    "public.pit_table_old",
  );
  await sql`insert into public.pit_table_old values (1, 19, 'one'), (2, 19, 'two')`;
  const at = await now();
  const before = await rowsOf("public.pit_table_old", 19);
  await sql`alter table public.pit_table_old rename to pit_table_new`;
  await sql`update public.pit_table_new set v = 'renamed'`;
  await sql`truncate public.pit_table_new`;
  await sql`insert into public.pit_table_new values (3, 19, 'three')`;
  await restoreTo(19, at, ["public.pit_table_new"]);
  assert.deepEqual(await rowsOf("public.pit_table_new", 19), before);
});

/** The tenant's rows of pit_added as text, sorted, of the columns named. */
async function addedRows(tenant: number, columns: string[]): Promise<string[]> {
  const [{ rows }] = await sql<{ rows: string[] }[]>`
    select coalesce(array_agg(t.r order by t.r), '{}') as rows
    from (select row_to_json(x)::text as r
      from (select ${sql(columns)} from public.pit_added where tenant_id = ${tenant}) x) t`;
  return rows;
}

dbTest(
  "a moment before columns were added restores with the columns it had; a drop stops the log",
  async () => {
    await captured(
      `create table public.pit_added (id bigint primary key, tenant_id bigint not null,
        note text)`,
      "public.pit_added",
    );
    await sql`insert into public.pit_added values (1, 8, 'a'), (2, 8, 'b'), (4, 8, 'd'),
      (6, 8, 'f'), (7, 8, 'g'), (10, 9, 'other tenant')`;
    const at = await now();
    const atRows = await addedRows(8, ["id", "tenant_id", "note"]);
    // A snapshot of the moment, to compare the rebuilt one with.
    const taken = await takeSnapshot(sql, { tenantId: "8", tables: ["public.pit_added"] });
    // Images of three columns: rows 1 and 2 changed, row 4 deleted, before any DDL.
    await sql`update public.pit_added set note = 'changed before the DDL' where id in (1, 2)`;
    await sql`delete from public.pit_added where id = 4`;
    await sql`alter table public.pit_added add column extra integer default 7`;
    // Images of four columns: row 6 first changed now, row 7 deleted now.
    await sql`update public.pit_added set note = 'between the DDLs', extra = 70 where id = 6`;
    await sql`delete from public.pit_added where id = 7`;
    await sql`update public.pit_added set extra = 8 where id = 1`;
    await sql`insert into public.pit_added values (3, 8, 'c', 9)`;
    // Two columns in one statement, one of them generated (images hold its value too).
    await sql`alter table public.pit_added add column memo text,
      add column twice bigint generated always as (id * 2) stored`;
    // Images of six columns.
    await sql`insert into public.pit_added (id, tenant_id, note) values (5, 8, 'e')`;
    await sql`update public.pit_added set memo = 'now', extra = extra + 1 where id in (1, 6)`;
    await sql`delete from public.pit_added where id = 2`;
    const other = await addedRows(9, ["id", "tenant_id", "note", "extra", "memo", "twice"]);

    // Validate says the moment can be rebuilt; the rebuilt moment is the snapshot taken then: the
    // same store (the columns it had), the same rows.
    const v = await validateAt(sql, { tenantId: "8", at, tables: ["public.pit_added"] });
    assert.equal(v.valid, true, JSON.stringify(v.checks));
    const moment = await snapshotAt(sql, { tenantId: "8", at, tables: ["public.pit_added"] });
    const [built, kept] = await Promise.all(
      [moment, taken].map(async (s) =>
        (await sql<{ store_id: string; checksum: string; columns: unknown }[]>`
        select store_id, checksum, columns from pitr.backup_snapshot_tables
        where snapshot_id = ${s.snapshot_id}`)[0]
      ),
    );
    assert.deepEqual(built, kept);

    await restoreTo(8, at, ["public.pit_added"]);
    assert.deepEqual(await addedRows(8, ["id", "tenant_id", "note"]), atRows);
    // The columns added since are left to the rows kept (1, 6), and take their default in the
    // rows put back (2, 4, 7), as a restore of the snapshot taken then leaves them.
    assert.deepEqual(await addedRows(8, ["id", "extra", "memo", "twice"]), [
      '{"id":1,"extra":9,"memo":"now","twice":2}',
      '{"id":2,"extra":7,"memo":null,"twice":4}',
      '{"id":4,"extra":7,"memo":null,"twice":8}',
      '{"id":6,"extra":71,"memo":"now","twice":12}',
      '{"id":7,"extra":7,"memo":null,"twice":14}',
    ]);
    assert.deepEqual(
      await addedRows(9, ["id", "tenant_id", "note", "extra", "memo", "twice"]),
      other,
    );

    // DROP COLUMN stops the log: writes go on, and a moment before it is refused naming it, as
    // is one between the two additions.
    const afterAdds = await now();
    await sql`alter table public.pit_added drop column note`;
    await sql`update public.pit_added set extra = extra + 1`;
    const [{ n }] = await sql<{ n: string }[]>`select count(*) as n from pitr.changes
      where relid = 'public.pit_added'::regclass and op = 'S'`;
    assert.equal(Number(n), 3);
    for (const moment of [at, afterAdds]) {
      await assert.rejects(
        snapshotAt(sql, { tenantId: "8", at: moment, tables: ["public.pit_added"] }),
        (e) => {
          assert.ok(e instanceof Unprocessable, String(e));
          assert.equal(e.code, "schema_incompatible");
          assert.match(e.message, /ALTER TABLE public\.pit_added: column note dropped/);
          return true;
        },
      );
    }
  },
);

dbTest(
  "a moment before a column was added is refused when the change's shape was not recorded, or the column's domain refuses NULL",
  async () => {
    await sql`create domain public.pit_required as integer not null`;
    await sql`create domain public.pit_required_too as public.pit_required check (value > 0)`;
    await captured(
      `create table public.pit_dom (id int primary key, tenant_id bigint not null, v text)`,
      "public.pit_dom",
    );
    await sql`insert into public.pit_dom values (1, 14, 'a')`;
    const at = await now();
    await sql`update public.pit_dom set v = 'b'`;
    await sql`create domain public.pit_checked as integer check (value is not null)`;
    await sql`alter table public.pit_dom add column w public.pit_required_too default 1`;
    await assert.rejects(
      snapshotAt(sql, { tenantId: "14", at, tables: ["public.pit_dom"] }),
      (e) =>
        e instanceof Unprocessable && e.code === "schema_incompatible" &&
        /column w \(public\.pit_required_too\) was added, a domain that refuses NULL/.test(
          e.message,
        ),
    );
    await sql`alter table public.pit_dom drop column w`;
    const later = await now();
    await sql`update public.pit_dom set v = 'c'`;
    await sql`alter table public.pit_dom add column x public.pit_checked default 1`;
    await assert.rejects(
      snapshotAt(sql, { tenantId: "14", at: later, tables: ["public.pit_dom"] }),
      (e) =>
        e instanceof Unprocessable && e.code === "schema_incompatible" &&
        /column x \(public\.pit_checked\) was added, a domain that refuses NULL/.test(e.message),
    );
    // A schema change logged before its shape was (as by an older version of this service).
    await captured(
      `create table public.pit_old_log (id int primary key, tenant_id bigint not null, v text)`,
      "public.pit_old_log",
    );
    await sql`insert into public.pit_old_log values (1, 14, 'a')`;
    const before = await now();
    await sql`alter table public.pit_old_log add column w text`;
    const v = await validateAt(sql, { tenantId: "14", at: before, tables: ["public.pit_old_log"] });
    assert.equal(v.valid, true, JSON.stringify(v.checks));
    await sql`delete from pitr.schema_changes where relid = 'public.pit_old_log'::regclass`;
    await assert.rejects(
      snapshotAt(sql, { tenantId: "14", at: before, tables: ["public.pit_old_log"] }),
      (e) =>
        e instanceof Unprocessable && e.code === "schema_incompatible" &&
        /ALTER TABLE public\.pit_old_log: column w text added\): the log cannot rebuild/.test(
          e.message,
        ),
    );
  },
);

dbTest(
  "a composite-typed column (nested, in an array, under a domain) restores exactly",
  async () => {
    await sql`create type public.pit_addr as (street text, zip integer, tags text[])`;
    await sql`create type public.pit_nest as (home public.pit_addr, at timestamptz, f float8)`;
    await sql`create domain public.pit_addr_d as public.pit_addr check ((value).zip > 0)`;
    await captured(
      `create table public.pit_comp (id int primary key, tenant_id bigint not null,
        home public.pit_addr, past public.pit_addr[], nest public.pit_nest,
        checked public.pit_addr_d)`,
      "public.pit_comp",
    );
    await sql`insert into public.pit_comp values
      (1, 9, row('Main St, "1"', 12345, '{a,"b c"}'), array[row('Old', null, null)::public.pit_addr],
        row(row('In', 1, '{}'), '2026-01-01 00:00:00.5+00', '-0'), row('D', 7, null)),
      (2, 9, null, '{}', null, null), (3, 9, row(null, null, null), null, row(null, null, null),
        null)`;
    const at = await now();
    const before = await rowsOf("public.pit_comp", 9);
    await asSession({ TimeZone: "Asia/Tokyo", extra_float_digits: "0" }, async (s) => {
      await s`update public.pit_comp set home = row('x', 1, null), nest = null`;
      await s`delete from public.pit_comp where id = 3`;
    });
    await restoreTo(9, at, ["public.pit_comp"]);
    assert.deepEqual(await rowsOf("public.pit_comp", 9), before);
  },
);

dbTest(
  "a transaction spanning at is all or nothing: left out whole before its commit, kept whole after",
  async () => {
    await captured(
      `create table public.pit_tx (id int primary key, tenant_id bigint not null, v text)`,
      "public.pit_tx",
    );
    await sql`insert into public.pit_tx values (1, 10, 'one'), (2, 10, 'two'), (3, 10, 'three')`;
    const session = await sql.reserve();
    let during: string;
    try {
      await session`begin`;
      await session`update public.pit_tx set v = 'tx: first statement' where id = 1`;
      await session`delete from public.pit_tx where id = 3`;
      during = await now(); // the transaction has written, and not committed
      await session`update public.pit_tx set v = 'tx: second statement' where id = 2`;
      await session`commit`;
    } finally {
      session.release();
    }
    const afterCommit = await now();
    const committed = await rowsOf("public.pit_tx", 10);
    // Its stamp is its commit, after `during`, though its first change came before.
    const [stamp] = await sql<{ since_before: boolean; committed_after: boolean }[]>`
      select x.since < ${during}::text::timestamptz as since_before,
        x.committed_at > ${during}::text::timestamptz as committed_after
      from pitr.commits x
      where x.txid = (select txid from pitr.changes where relid = 'public.pit_tx'::regclass
        and op = 'D')`;
    assert.deepEqual({ ...stamp }, { since_before: true, committed_after: true });
    await sql`update public.pit_tx set v = 'later'`;
    await restoreTo(10, during, ["public.pit_tx"]);
    assert.deepEqual(await rowsOf("public.pit_tx", 10), [
      "(1,10,one)",
      "(2,10,two)",
      "(3,10,three)",
    ]);
    await restoreTo(10, afterCommit, ["public.pit_tx"]);
    assert.deepEqual(await rowsOf("public.pit_tx", 10), committed);
    assert.ok(committed.includes('(2,10,"tx: second statement")'));
  },
);

dbTest(
  "a transaction whose captured changes are one statement counts whole from that statement",
  async () => {
    await captured(
      `create table public.pit_one (id int primary key, tenant_id bigint not null, v text)`,
      "public.pit_one",
    );
    await sql`insert into public.pit_one values (1, 20, 'one'), (2, 20, 'two')`;
    const session = await sql.reserve();
    let during: string;
    try {
      await session`begin`;
      await session`update public.pit_one set v = v || ' changed'`;
      during = await now();
      await session`commit`;
    } finally {
      session.release();
    }
    const [{ stamped }] = await sql<{ stamped: boolean }[]>`
      select exists (select from pitr.commits x join pitr.changes c using (txid)
        where c.relid = 'public.pit_one'::regclass and c.op = 'U') as stamped`;
    assert.equal(stamped, false); // no commit stamp: its rows' time stands for it
    await sql`update public.pit_one set v = 'later'`;
    await restoreTo(20, during, ["public.pit_one"]);
    assert.deepEqual(await rowsOf("public.pit_one", 20), [
      '(1,20,"one changed")',
      '(2,20,"two changed")',
    ]);
  },
);

dbTest(
  "a transaction that wrote more than a second before at and committed after it is left out whole",
  async () => {
    await captured(
      `create table public.pit_long (id int primary key, tenant_id bigint not null, v text)`,
      "public.pit_long",
    );
    await sql`insert into public.pit_long values (1, 18, 'one'), (2, 18, 'two')`;
    const session = await sql.reserve();
    let during: string;
    try {
      await session`begin`;
      await session`update public.pit_long set v = 'long ago' where id = 1`;
      await new Promise((ok) => setTimeout(ok, 1500));
      during = await now();
      await session`update public.pit_long set v = 'just now' where id = 2`;
      await session`commit`;
    } finally {
      session.release();
    }
    await restoreTo(18, during, ["public.pit_long"]);
    assert.deepEqual(await rowsOf("public.pit_long", 18), ["(1,18,one)", "(2,18,two)"]);
  },
);

dbTest(
  "SET CONSTRAINTS ALL IMMEDIATE does not stamp a transaction before its last change",
  async () => {
    await captured(
      `create table public.pit_immediate (id int primary key, tenant_id bigint not null, v text)`,
      "public.pit_immediate",
    );
    await sql`insert into public.pit_immediate values (1, 11, 'one'), (2, 11, 'two')`;
    const session = await sql.reserve();
    let during: string;
    try {
      await session`begin`;
      await session`set constraints all immediate`;
      await session`update public.pit_immediate set v = 'early' where id = 1`;
      during = await now();
      await session`update public.pit_immediate set v = 'late' where id = 2`;
      await session`commit`;
    } finally {
      session.release();
    }
    await restoreTo(11, during, ["public.pit_immediate"]);
    assert.deepEqual(await rowsOf("public.pit_immediate", 11), ["(1,11,one)", "(2,11,two)"]);
  },
);

dbTest(
  "an application's deferred trigger that writes at commit is stamped after its write",
  async () => {
    await captured(
      `create table public.pit_late (id int primary key, tenant_id bigint not null, v text)`,
      "public.pit_late",
    );
    await sql`insert into public.pit_late values (1, 16, 'one'), (2, 16, 'two')`;
    // A deferred trigger queued after capture's own stamp fires after it, at commit, and
    // changes a captured row: the transaction must be stamped again, after that change.
    await sql.unsafe(`create table public.pit_late_queue (id int primary key);
      create function public.pit_late_touch() returns trigger language plpgsql as $$
      begin update public.pit_late set v = 'written at commit' where id = 2; return null; end $$;
      create constraint trigger pit_late_touch after insert on public.pit_late_queue
        deferrable initially deferred for each row execute function public.pit_late_touch()`);
    await sql.begin(async (tx) => {
      await tx`update public.pit_late set v = 'changed' where id = 1`;
      await tx`insert into public.pit_late_queue values (1)`;
    });
    const [t] = await sql<{ ok: boolean; changes: number }[]>`
      select x.committed_at >= max(c.changed_at) as ok, count(*)::int as changes
      from pitr.changes c join pitr.commits x on x.txid = c.txid
      where c.relid = 'public.pit_late'::regclass and c.op = 'U'
      group by x.committed_at`;
    assert.deepEqual({ ...t }, { ok: true, changes: 2 });
  },
);

dbTest(
  "a schema change is placed at its commit: an ALTER TABLE spanning at is refused, after it is not",
  async () => {
    await captured(
      `create table public.pit_ddl_tx (id int primary key, tenant_id bigint not null, v text)`,
      "public.pit_ddl_tx",
    );
    await sql`insert into public.pit_ddl_tx values (1, 17, 'one')`;
    const session = await sql.reserve();
    let during: string;
    try {
      await session`begin`;
      await session`alter table public.pit_ddl_tx alter column v type varchar(20)`;
      during = await now();
      await session`commit`;
    } finally {
      session.release();
    }
    const after = await now();
    const state = await rowsOf("public.pit_ddl_tx", 17);
    await sql`update public.pit_ddl_tx set v = 'after'`;
    await assert.rejects(
      snapshotAt(sql, { tenantId: "17", at: during, tables: ["public.pit_ddl_tx"] }),
      (e) =>
        e instanceof Unprocessable &&
        /column v changed from text to character varying\(20\)/.test(e.message),
    );
    await restoreTo(17, after, ["public.pit_ddl_tx"]);
    assert.deepEqual(await rowsOf("public.pit_ddl_tx", 17), state);
  },
);

/** The first lc_monetary other than C that the server accepts, if the machine has one. */
async function otherMonetaryLocale(): Promise<string> {
  for (const name of ["de_DE.utf8", "de_DE.UTF-8", "fr_FR.utf8", "en_IN.utf8", "C.utf8"]) {
    try {
      await sql`select set_config('lc_monetary', ${name}, true)`;
      return name;
    } catch {
      // not installed on this machine
    }
  }
  return "C";
}

dbTest("money under another lc_monetary: restored exactly, and its digests agree", async () => {
  const other = await otherMonetaryLocale();
  console.log(`lc_monetary of the other sessions: ${other}`);
  await captured(
    `create table public.pit_money (id int primary key, tenant_id bigint not null, m money,
      ms money[])`,
    "public.pit_money",
  );
  await sql`insert into public.pit_money values (1, 12, 1234.56, '{0.01,-3}'),
    (2, 12, '92233720368547758.07'::numeric::money, null), (3, 12, -0.5, '{}')`;
  const at = await now();
  const before = await rowsOf("public.pit_money", 12);
  await asSession({ lc_monetary: other }, async (s) => {
    await s`update public.pit_money set m = 1, ms = '{}'`;
    await s`delete from public.pit_money where id = 3`;
  });
  await restoreTo(12, at, ["public.pit_money"]);
  assert.deepEqual(await rowsOf("public.pit_money", 12), before);
  // A money table is hashed by its rows' text (money has no hash function): a snapshot taken
  // by a session under another lc_monetary must validate in this one.
  const elsewhere = poolWith({ lc_monetary: other });
  try {
    const s = await takeSnapshot(elsewhere, {
      tenantId: "12",
      tables: ["public.pit_money"],
    });
    const v = await validateSnapshot(sql, s.snapshot_id);
    assert.equal(v.valid, true, JSON.stringify(v.checks));
  } finally {
    await elsewhere.end();
  }
});

dbTest("every engine function that pins how values are written pins lc_monetary too", async () => {
  const unpinned = await sql<{ f: string }[]>`
    select p.oid::regprocedure::text as f from pg_proc p
    where p.pronamespace = 'pitr'::regnamespace
      and exists (select from unnest(p.proconfig) s where s ilike 'timezone=%')
      and not exists (select from unnest(p.proconfig) s where s = 'lc_monetary=C')
      -- A capture function pins lc_monetary when its table has money (tested below).
      and p.proname !~ '^capture_\\d+$'`;
  assert.deepEqual([...unpinned], []);
});

dbTest(
  "each capture function pins the settings its column types are written by, as the rebuild reads",
  async () => {
    const configs = new Map(
      (await sql<{ f: string; config: string[] }[]>`
        select coalesce(c.table_schema || '.' || c.table_name, p.proname::text) as f,
          array(select s from unnest(p.proconfig) s order by s) as config
        from pg_proc p left join pitr.capture_tables c on p.proname = 'capture_' || c.relid
        where p.pronamespace = 'pitr'::regnamespace
          and (p.proname ~ '^capture_\\d+$' or p.proname = 'snapshot_table_at')`)
        .map((c) => [c.f, c.config]),
    );
    const rebuild = configs.get("snapshot_table_at")!;
    const always = ["DateStyle=ISO, YMD", "TimeZone=UTC", "search_path=pg_catalog, pg_temp"];
    const pinned = (table: string) => configs.get(table)!.filter((s) => !always.includes(s));
    // Every capture function writes with the rebuild's values, and pins what its types need.
    for (const [f, config] of configs) {
      for (const s of config) assert.ok(rebuild.includes(s), `${f}: ${s}`);
      if (f !== "snapshot_table_at") {
        assert.deepEqual(always.filter((s) => config.includes(s)), always);
      }
    }
    assert.deepEqual(pinned("public.pit_digits"), [
      "IntervalStyle=postgres",
      "bytea_output=hex",
      "extra_float_digits=3",
    ]);
    assert.deepEqual(pinned("public.pit_money"), ["lc_monetary=C"]);
    // Through the composite columns: a timestamptz and a float8 in pit_nest.
    assert.deepEqual(pinned("public.pit_comp"), ["extra_float_digits=3"]);
    assert.deepEqual(pinned("public.pit_array"), []); // integers and text only
    assert.deepEqual(pinned("public.pit_float"), ["extra_float_digits=3"]);
    for (const s of ["array_nulls=on", "xmloption=content", "lc_monetary=C"]) {
      assert.ok(rebuild.includes(s), s); // the rebuild pins them all, and what shapes reading
    }
  },
);

dbTest("a row moved to another tenant after at is not in that tenant's state at at", async () => {
  await captured(
    `create table public.pit_move (id int primary key, tenant_id bigint not null, v text)`,
    "public.pit_move",
  );
  await sql`insert into public.pit_move values (1, 13, 'of 13'), (2, 14, 'of 14')`;
  const at = await now();
  const before = await rowsOf("public.pit_move", 14);
  await sql`update public.pit_move set tenant_id = 14, v = 'moved' where id = 1`;
  await restoreTo(14, at, ["public.pit_move"]);
  assert.deepEqual(await rowsOf("public.pit_move", 14), before);
});

dbTest("a table without a primary key is refused by capture_enable, with the reason", async () => {
  await sql`create table public.pit_nokey (tenant_id bigint not null, v text)`;
  try {
    await assert.rejects(
      sql`select pitr.capture_enable('public.pit_nokey')`,
      (e) => /has no primary key: capture needs one/.test((e as Error).message),
    );
  } finally {
    await sql`drop table public.pit_nokey`;
  }
});

dbTest(
  "without the event trigger, a schema change found at rebuild refuses every moment before it",
  async () => {
    await captured(
      `create table public.pit_unseen (id int primary key, tenant_id bigint not null, v text)`,
      "public.pit_unseen",
    );
    await sql`insert into public.pit_unseen values (1, 15, 'a')`;
    const at = await now();
    await sql`alter event trigger pitr_capture_ddl disable`;
    try {
      await sql`alter table public.pit_unseen add column w text`;
      await sql`update public.pit_unseen set w = 'written after the DDL'`;
    } finally {
      await sql`alter event trigger pitr_capture_ddl enable always`;
    }
    await assert.rejects(
      snapshotAt(sql, { tenantId: "15", at, tables: ["public.pit_unseen"] }),
      (e) =>
        e instanceof Unprocessable && e.code === "schema_incompatible" &&
        /public\.pit_unseen was altered when no event trigger could record it \(column w text added\)/
          .test(e.message),
    );
  },
);

cleanup(db);
