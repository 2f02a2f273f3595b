// The postgres.js client and the choice of database URL.
// It must never log query parameters: they hold tenant rows.
import postgres from "postgres";

export type Sql = postgres.Sql;
export type TransactionSql = postgres.TransactionSql;
/** A handle that runs queries: the pool, or a transaction the caller holds. */
export type Db = Sql | TransactionSql;

/** SUPABASE_DB_URL (set by Supabase in every function), else DATABASE_URL, else none. */
export function configuredDatabaseUrl(): string | undefined {
  return Deno.env.get("SUPABASE_DB_URL") || Deno.env.get("DATABASE_URL") || undefined;
}

const urls = new WeakMap<Sql, string>();

/** The URL a client was made from, to open a dedicated session to the same database. */
export function urlOf(sql: Sql): string {
  const url = urls.get(sql);
  if (!url) throw new Error("this client was not made by connect()");
  return url;
}

export interface ConnectOptions {
  max?: number;
  /** null: never close a connection for its age (a session that holds a transaction). */
  maxLifetime?: null;
  /** Opens the socket (a pinned session's, shared/db/session.ts); postgres.js's own otherwise. */
  socket?: (options: { host: string[]; port: number[]; path: string | false }) => unknown;
  onclose?: (connectionId: number) => void;
}

export function connect(url: string, options: ConnectOptions = {}): Sql {
  const sql = postgres(url, {
    max: options.max ?? 10,
    onnotice: () => {},
    // Tenant ids travel as text; bigint counts come back as strings, read them with Number().
    connection: { application_name: "pitr" },
    ...(options.maxLifetime === null ? { max_lifetime: null } : {}),
    ...(options.onclose ? { onclose: options.onclose } : {}),
    // postgres.js takes `socket` but does not declare it in its types.
    ...(options.socket ? { socket: options.socket } as Record<string, unknown> : {}),
  });
  urls.set(sql, url);
  return sql;
}
