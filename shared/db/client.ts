// The postgres.js client, the choice of database URL, and the process's connection budget: one
// pool and a gate for dedicated sessions, sized together. It must never log query parameters
// (they hold tenant rows), nor open a connection the budget does not cover.
import postgres from "postgres";
import { budgetFromEnv, type BudgetSettings, sessionGate, split } from "./budget.ts";
import type { Gate } from "./gate.ts";
import { IdleSessions, sessionIdleMsFromEnv } from "./idle.ts";

export type Sql = postgres.Sql;
export type TransactionSql = postgres.TransactionSql;
/** A handle that runs queries: the pool, or a transaction the caller holds. */
export type Db = Sql | TransactionSql;

/** The same server's URL with another database in it (tests and benchmarks make their own). */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** SUPABASE_DB_URL (set by Supabase in every function), else DATABASE_URL, else none. */
export function configuredDatabaseUrl(): string | undefined {
  return Deno.env.get("SUPABASE_DB_URL") || Deno.env.get("DATABASE_URL") || undefined;
}

interface Origin {
  url: string;
  application: string;
  sessions: Gate;
  /** Sessions kept open between transactions, within the gate's slots (idle.ts). */
  idle: IdleSessions;
}

const origins = new WeakMap<Sql, Origin>();

function originOf(sql: Sql): Origin {
  const origin = origins.get(sql);
  if (!origin) throw new Error("this client was not made by connect()");
  return origin;
}

export interface ConnectOptions {
  /**
   * The most connections this client holds at once, its pool and its dedicated sessions together
   * (PITR_MAX_CONNECTIONS by default); see split() for how they are shared.
   */
  max?: number;
  /**
   * How many of `max` are dedicated sessions, when not the usual split: 0 for a tool that runs
   * no transaction() and wants every connection in its pool.
   */
  sessions?: number;
  /** Work that may wait for a session (PITR_QUEUE_MAX by default). */
  queue?: number;
  /** How long work waits for a session (PITR_QUEUE_WAIT_MS by default). */
  waitMs?: number;
  /** application_name, by which pg_stat_activity tells this service's connections apart. */
  application?: string;
}

export function connect(url: string, options: ConnectOptions = {}): Sql {
  const env = budgetFromEnv();
  const settings: BudgetSettings = {
    connections: options.max ?? env.connections,
    queue: options.queue ?? env.queue,
    waitMs: options.waitMs ?? env.waitMs,
  };
  const { pool, sessions } = options.sessions === undefined
    ? split(settings.connections)
    : { pool: settings.connections - options.sessions, sessions: options.sessions };
  if (pool < 1 || sessions < 0) {
    throw new Error(`no pool left in a budget of ${settings.connections}`);
  }
  const application = options.application ?? "pitr";
  const sql = postgres(url, clientOptions(pool, application));
  const idle = new IdleSessions(sessionIdleMsFromEnv());
  origins.set(sql, { url, application, sessions: sessionGate(sessions, settings), idle });
  // Ending the client ends the sessions it keeps: every caller's sql.end() (tools, tests) closes
  // all of its connections, as before sessions were kept.
  const end = sql.end.bind(sql);
  Object.assign(sql, {
    end: async (options?: { timeout?: number }) => {
      await idle.closeAll();
      return await end(options);
    },
  });
  return sql;
}

function clientOptions(max: number, application: string) {
  return {
    max,
    onnotice: () => {},
    // Tenant ids travel as text; bigint counts come back as strings, read them with Number().
    connection: { application_name: application },
  };
}

/** The gate a dedicated session of this client must pass (transaction.ts). */
export function sessionsOf(sql: Sql): Gate {
  return originOf(sql).sessions;
}

/** The sessions this client keeps between transactions (transaction.ts). */
export function idleSessionsOf(sql: Sql): IdleSessions {
  return originOf(sql).idle;
}

/** How a session's one connection is opened and watched (shared/db/session.ts). */
export interface SessionSocket {
  /** Opens the socket; postgres.js takes it but does not declare it in its types. */
  socket: (options: { host: string[]; port: number[]; path: string | false }) => unknown;
  onclose: (connectionId: number) => void;
}

/**
 * A one-connection client to the same database, for a session of its own. Only session.ts opens
 * one, for transaction.ts after it passed sessionsOf(sql), so that it is counted in the budget.
 */
export function sessionClient(sql: Sql, watch: SessionSocket): Sql {
  const { url, application } = originOf(sql);
  return postgres(url, {
    ...clientOptions(1, application),
    // postgres.js would otherwise close the connection after 30 to 60 minutes, between two
    // statements of a long restore.
    max_lifetime: null,
    onclose: watch.onclose,
    ...{ socket: watch.socket } as Record<string, unknown>,
  });
}
