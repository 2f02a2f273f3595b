// The application's own writes for the capture benchmark: a protected `events` table and a
// pgbench-style loop of single-row INSERT/UPDATE/DELETE and per-tenant UPDATEs on several
// connections. It must never touch another database than the fresh one the benchmark created.
import type { Sql } from "../shared/db/client.ts";

/** Rows per tenant: a per-tenant UPDATE touches about this many rows. */
export const ROWS_PER_TENANT = 100;
/** Ids of rows the loop inserts start here, far above any loaded row, one range per client. */
const INSERT_BASE = 10_000_000_000;
const INSERT_SPAN = 1_000_000_000;

const DEADLOCK_DETECTED = "40P01";

export const KINDS = ["update", "insert", "delete", "tenant_update"] as const;
export type Kind = typeof KINDS[number];

/**
 * The transaction mix, in percent. Inserts and deletes balance so the table keeps its size; a
 * delete removes a row its client inserted earlier, so every statement changes the rows it names.
 */
export const MIX: Record<Kind, number> = { update: 48, insert: 25, delete: 25, tenant_update: 2 };

export async function createEvents(sql: Sql): Promise<void> {
  await sql`create table public.events (
    id bigint primary key,
    tenant_id bigint not null,
    kind text,
    payload jsonb,
    updated_at timestamptz)`;
  await sql`create index events_tenant_id on public.events (tenant_id)`;
}

/** Loads `rows` rows in one statement; tenants are interleaved, as in a shared table. */
export async function loadEvents(sql: Sql, rows: number): Promise<number> {
  const tenants = Math.max(1, Math.floor(rows / ROWS_PER_TENANT));
  await sql`insert into public.events (id, tenant_id, kind, payload, updated_at)
    select g, (g - 1) % ${tenants} + 1,
      (array['page_view', 'click', 'signup', 'purchase', 'logout'])[1 + g % 5],
      jsonb_build_object(
        'source', (array['web', 'ios', 'android', 'api'])[1 + g % 4],
        'ip', format('10.%s.%s.%s', g % 256, (g / 256) % 256, (g / 65536) % 256),
        'session', md5(g::text),
        'items', jsonb_build_array(g % 97, g % 13, g % 7),
        'amount', (g % 100000) / 100.0,
        'note', repeat('x', (g % 64)::integer)),
      timestamptz '2026-01-01' + g * interval '1 second'
    from generate_series(1, ${rows}::bigint) g`;
  await sql`vacuum analyze public.events`;
  return tenants;
}

/** A small seeded generator (mulberry32), so both modes of a repetition run the same mix. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function payload(n: number): string {
  return JSON.stringify({
    source: ["web", "ios", "android", "api"][n % 4],
    ip: `10.${n % 256}.${(n >> 8) % 256}.${(n >> 16) % 256}`,
    session: n.toString(16).padStart(32, "0"),
    items: [n % 97, n % 13, n % 7],
    amount: (n % 100000) / 100,
    note: "x".repeat(n % 64),
  });
}

/** One client's state that lasts across repetitions: the rows it inserted and not yet deleted. */
export class Client {
  private inserted: number[] = [];
  private next = 0;
  constructor(readonly index: number) {}

  nextId(): number {
    return INSERT_BASE + this.index * INSERT_SPAN + this.next++;
  }
  remember(id: number) {
    this.inserted.push(id);
  }
  /** The oldest row this client inserted that is still there, if any. */
  takeInserted(): number | undefined {
    return this.inserted.shift();
  }
}

export interface RunResult {
  /** Wall time of the whole run, all clients together, in seconds. */
  seconds: number;
  transactions: number;
  /** Each transaction's latency in milliseconds, by kind. */
  latencies: Record<Kind, number[]>;
  /** Rows the application's statements changed, as the server counted them. */
  rowsChanged: number;
  deadlocks: number;
}

export interface RunOptions {
  loadedRows: number;
  tenants: number;
  clients: Client[];
  transactionsPerClient: number;
  seed: number;
}

/** Runs every client's bounded loop on its own connection, concurrently. */
export async function runWorkload(sql: Sql, o: RunOptions): Promise<RunResult> {
  const latencies: Record<Kind, number[]> = {
    update: [],
    insert: [],
    delete: [],
    tenant_update: [],
  };
  let rowsChanged = 0;
  let deadlocks = 0;
  const conns = await Promise.all(o.clients.map(() => sql.reserve()));
  const loop = async (client: Client, db: Sql) => {
    const rand = random(o.seed * 1_000 + client.index);
    for (let i = 0; i < o.transactionsPerClient; i++) {
      const r = rand() * 100;
      let kind: Kind = r < MIX.update
        ? "update"
        : r < MIX.update + MIX.insert
        ? "insert"
        : r < MIX.update + MIX.insert + MIX.delete
        ? "delete"
        : "tenant_update";
      let toDelete: number | undefined;
      if (kind === "delete") {
        toDelete = client.takeInserted();
        if (toDelete === undefined) kind = "insert";
      }
      const n = Math.floor(rand() * 2 ** 31);
      const start = performance.now();
      for (let attempt = 0;; attempt++) {
        try {
          // Not `+= await`: that reads the sum before the await and loses the other clients' rows.
          const changed = await statement(db, kind, n, o, client, toDelete);
          rowsChanged += changed;
          break;
        } catch (e) {
          // Two per-tenant UPDATEs can meet on the same rows; retry as an application would.
          if ((e as { code?: string }).code !== DEADLOCK_DETECTED || attempt >= 3) throw e;
          deadlocks++;
        }
      }
      latencies[kind].push(performance.now() - start);
    }
  };
  const start = performance.now();
  try {
    await Promise.all(o.clients.map((c, i) => loop(c, conns[i] as unknown as Sql)));
  } finally {
    for (const c of conns) c.release();
  }
  const seconds = (performance.now() - start) / 1000;
  const transactions = KINDS.reduce((t, k) => t + latencies[k].length, 0);
  return { seconds, transactions, latencies, rowsChanged, deadlocks };
}

/** One autocommitted statement; returns the rows it changed. */
async function statement(
  db: Sql,
  kind: Kind,
  n: number,
  o: RunOptions,
  client: Client,
  toDelete: number | undefined,
): Promise<number> {
  switch (kind) {
    case "update": {
      const id = 1 + (n % o.loadedRows);
      const r = await db`update public.events
        set payload = payload || ${
        JSON.stringify({ amount: (n % 100000) / 100, seen: true })
      }::jsonb,
          updated_at = now()
        where id = ${id}`;
      if (r.count !== 1) throw new Error(`the update of event ${id} changed ${r.count} rows`);
      return r.count;
    }
    case "insert": {
      const id = client.nextId();
      const r = await db`insert into public.events (id, tenant_id, kind, payload, updated_at)
        values (${id}, ${1 + (n % o.tenants)}, 'click', ${payload(n)}::jsonb, now())`;
      client.remember(id);
      return r.count;
    }
    case "delete": {
      const r = await db`delete from public.events where id = ${toDelete!}`;
      if (r.count !== 1) throw new Error(`the delete of event ${toDelete} changed ${r.count} rows`);
      return r.count;
    }
    case "tenant_update": {
      const r = await db`update public.events set kind = 'archived', updated_at = now()
        where tenant_id = ${1 + (n % o.tenants)}`;
      return r.count;
    }
  }
}
