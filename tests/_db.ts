// Each test file gets its own database cloned from the migrated template that tests/run.ts built.
// The database is dropped when every test of the file passed, and left behind for a look when not.
import { connect, type Sql, type TransactionSql, withDatabase } from "../shared/db/client.ts";
import { executeRestore } from "../shared/restore/execute.ts";
import { createRestore, type RestoreRequest } from "../shared/restore/history.ts";

export interface TestDb {
  sql: Sql;
  url: string;
  name: string;
}

const adminUrl = Deno.env.get("PITR_TEST_ADMIN_URL");
const template = Deno.env.get("PITR_TEST_TEMPLATE");

export async function testDatabase(label: string): Promise<TestDb> {
  if (!adminUrl || !template) throw new Error("run the tests with `deno task test`");
  const name = `pitr_test_${label}_${crypto.randomUUID().slice(0, 8)}`;
  const admin = connect(adminUrl, { max: 1 });
  await admin`create database ${admin(name)} template ${admin(template)}`;
  await admin.end();
  const url = withDatabase(adminUrl, name);
  return { sql: connect(url, { max: 12 }), url, name };
}

/** A database with nothing in it (template0): a test that builds a project from the start. */
export async function emptyDatabase(label: string): Promise<TestDb> {
  if (!adminUrl) throw new Error("run the tests with `deno task test`");
  const name = `pitr_test_${label}_${crypto.randomUUID().slice(0, 8)}`;
  const admin = connect(adminUrl, { max: 1 });
  await admin`create database ${admin(name)} template template0`;
  await admin.end();
  const url = withDatabase(adminUrl, name);
  return { sql: connect(url, { max: 12 }), url, name };
}

let failures = 0;

/**
 * Deno.test with the database's resources allowed to outlive a test, and failures counted;
 * `ignore` for a test the server cannot run (it is reported as ignored, never as passed).
 */
export function dbTest(name: string, fn: () => Promise<void>, options: { ignore?: boolean } = {}) {
  Deno.test({
    name,
    ignore: options.ignore,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      try {
        await fn();
      } catch (e) {
        failures++;
        throw e;
      }
    },
  });
}

/** Registers the last test of a file: closes the pool and drops the database if all passed. */
export function cleanup(db: TestDb) {
  Deno.test({
    name: "cleanup",
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      await db.sql.end({ timeout: 5 });
      if (failures > 0) {
        console.log(`left database ${db.name} behind for inspection`);
        return;
      }
      const admin = connect(adminUrl!, { max: 1 });
      await admin`drop database if exists ${admin(db.name)} with (force)`;
      await admin.end();
    },
  });
}

/** Where a snapshot table's rows are stored: the store, and the tenant and seq that select them. */
export async function storeOf(sql: Sql, snapshotTableId: number | string) {
  const [r] = await sql<{ store_table: string; tenant_id: string; seq: string }[]>`
    select store_table, tenant_id, seq from pitr.backup_snapshot_tables where id = ${snapshotTableId}`;
  return { table: r.store_table, tenant: r.tenant_id, seq: Number(r.seq) };
}

/** The fixture's digest of one tenant's rows in every table (tests/fixtures/app.sql). */
export async function tenantDigest(sql: Sql, tenant: number): Promise<string> {
  const [r] = await sql<{ d: string }[]>`select public.tenant_digest(${tenant}) as d`;
  return r.d;
}

/** The database's clock as ISO text with microseconds, a few ms clear of any change around it. */
export async function clearMoment(sql: Sql): Promise<string> {
  const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));
  await sleep(5);
  const [{ t }] = await sql<{ t: string }[]>`
    select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t`;
  await sleep(5);
  return t;
}

/**
 * Stand-ins for Supabase's Vault view and pg_net's http_post, inside a transaction the caller
 * rolls back: a cron job's SQL then runs as written, and its calls land in net.calls.
 */
export async function netStandIns(tx: TransactionSql): Promise<void> {
  await tx`create schema vault`;
  await tx`create table vault.decrypted_secrets (name text, decrypted_secret text)`;
  await tx`create schema net`;
  await tx`create table net.calls (url text, headers jsonb, body jsonb, timeout int)`;
  await tx`create function net.http_post(url text, headers jsonb, body jsonb, timeout_milliseconds int)
    returns bigint language sql as
    'insert into net.calls values (url, headers, body, timeout_milliseconds) returning 1::bigint'`;
}

/** A restore as the API runs it: recorded, then executed; its final status (completed or not). */
export async function restoreSnapshot(sql: Sql, request: RestoreRequest) {
  const { id } = await createRestore(sql, request);
  return await executeRestore(sql, id);
}
