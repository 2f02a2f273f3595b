// A database session pinned to one backend, for a transaction: every wait on it ends the moment
// its backend is gone. It must never run a statement on a second backend, nor wait forever.
//
// Why not a plain one-connection postgres.js client: when its socket closes, postgres.js
//   - reconnects on the next query, silently: a transaction's later statements would run on a new
//     backend, outside the transaction, in autocommit;
//   - loses a query written between the socket's 'error' (EPIPE after the server's FIN) and its
//     'close' event: closed(hadError = true) rejects nothing, so that query, typically the
//     ROLLBACK that follows the error, waits forever;
//   - reconnects during startup (closed() with a pending first query) without calling onclose.
// So the socket factory here opens the one socket and refuses any other, and the session ends
// its client (which rejects every pending and later query) as soon as it learns the backend is
// gone: the connection closed, the factory was asked for a second socket, or abort() (the
// restore's heartbeat found the backend gone from pg_stat_activity).
import net from "node:net";
import { sessionClient, type Sql } from "./client.ts";

/** The code of the error every wait on an ended session rejects with (see isConnectionLost). */
export const SESSION_ENDED = "PITR_SESSION_ENDED";

export class SessionEnded extends Error {
  readonly code = SESSION_ENDED;
  constructor(reason: string) {
    super(reason);
    this.name = "SessionEnded";
  }
}

export interface Session {
  sql: Sql;
  /** Rejects with SessionEnded once the backend is gone; stays pending after a clean end(). */
  ended: Promise<never>;
  /** Whether the backend went away (or abort was called) before end(). */
  lost(): boolean;
  /** Ends the session now: every wait on it rejects, the server rolls its transaction back. */
  abort(reason: string): void;
  /** Closes the session: at once when it was lost (or `lost`), else after its last query. */
  end(lost?: boolean): Promise<void>;
  /**
   * Clears what a transaction may leave on its session once it has committed (settings made for the
   * session, such as a snapshot's lock_timeout; session advisory locks, such as a snapshot's
   * tenant lock; temporary tables), so that the next transaction can be given it (idle.ts).
   * False when it could not: the session must then be closed.
   */
  reset(): Promise<boolean>;
  /** Kept unused (idle.ts): its connection no longer keeps the process alive. */
  release(): void;
  /** Taken for a transaction again. */
  hold(): void;
  /** When it was opened (Date.now()). */
  openedAt: number;
}

interface SocketOptions {
  host: string[];
  port: number[];
  path: string | false;
}

/** A session of `sql`'s database: its connection is opened here and counted by the caller. */
export function openSession(pool: Sql): Session {
  let opened = false;
  let connection: net.Socket | undefined;
  let closing = false;
  let lostReason: string | undefined;
  let reject: (e: SessionEnded) => void = () => {};
  const ended = new Promise<never>((_, r) => reject = r);
  // Nobody need listen: the session's queries carry the same failure.
  ended.catch(() => {});

  const sql: Sql = sessionClient(pool, {
    socket: (o: SocketOptions) => {
      if (opened) {
        lose("the session's connection closed; its transaction cannot move to a new one");
        throw new SessionEnded(lostReason!);
      }
      opened = true;
      // The first host only: a session is one backend, and a failover would be a new one.
      const socket = o.path ? net.connect(o.path) : net.connect(o.port[0], o.host[0]);
      connection = socket;
      // postgres.js reads it for TLS's server name.
      Object.assign(socket, { host: o.host[0] });
      return socket;
    },
    onclose: () => {
      if (!closing) lose("the session's connection closed");
    },
  });

  function lose(reason: string) {
    if (lostReason !== undefined || closing) return;
    lostReason = reason;
    reject(new SessionEnded(reason));
    // Rejects the query in flight (even one postgres.js lost between 'error' and 'close'), the
    // queued ones, and every later one with CONNECTION_ENDED; never opens another connection.
    sql.end({ timeout: 0 }).catch(() => {});
  }

  return {
    sql,
    ended,
    lost: () => lostReason !== undefined,
    abort: lose,
    end: async (lost = false) => {
      closing = true;
      // A query postgres.js lost after the socket's error would hold a graceful end for 5 s.
      await sql.end({ timeout: lost || lostReason !== undefined ? 0 : 5 });
    },
    reset: async () => {
      if (lostReason !== undefined) return false;
      try {
        // Fixed text. Prepared statements and the backend's caches stay: they are what is kept.
        await sql.unsafe("reset all; discard temp; select pg_advisory_unlock_all()");
        return lostReason === undefined;
      } catch {
        return false;
      }
    },
    openedAt: Date.now(),
    release: () => connection?.unref(),
    hold: () => connection?.ref(),
  };
}
