// The sessions a client keeps open between transactions, so that the next transaction starts on a
// warm backend: no connection to open, and its engine functions compiled and its catalog caches
// filled by the last one. A restore of a 5% drift of 111,000 rows took 579 ms on a new backend and
// 355 ms on a kept one (PostgreSQL 15, median of 5; the README's Connections and load).
// It must never hand out a session that is lost or still holds anything of its last transaction
// (session.ts reset()), nor keep more sessions than the gate's slots that opened them, nor keep
// one open longer than PITR_SESSION_IDLE_MS unused, nor after the client ends.
import type { Session } from "./session.ts";

/** How long a session is kept unused before it is closed; 0 keeps none. */
export function sessionIdleMsFromEnv(): number {
  const text = Deno.env.get("PITR_SESSION_IDLE_MS");
  if (text === undefined || text === "") return 10_000;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) {
    throw new Error("PITR_SESSION_IDLE_MS must be a whole number ≥ 0");
  }
  return n;
}

/**
 * A session is not kept past this age, as postgres.js retires its pool's connections after 30 to
 * 60 minutes: what a backend accumulates (pitr.restore_sql's per-table settings, one for each
 * snapshot table it has restored; its caches) does not grow without end.
 */
const MAX_AGE_MS = 30 * 60_000;

interface Kept {
  session: Session;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * Only a holder of one of the gate's slots takes or keeps a session, and it opens a new one only
 * when none is kept: sessions open (in use and kept) never outnumber the slots.
 */
export class IdleSessions {
  private kept: Kept[] = [];
  private ended = false;

  constructor(private idleMs: number) {}

  /** The session kept last (the warmest), or undefined; lost ones are closed on the way. */
  take(): Session | undefined {
    for (let k = this.kept.pop(); k; k = this.kept.pop()) {
      clearTimeout(k.timer);
      if (!k.session.lost()) {
        k.session.hold();
        return k.session;
      }
      k.session.end(true).catch(() => {});
    }
    return undefined;
  }

  /** Keeps a session whose transaction committed and was reset (transaction.ts), or closes it. */
  async keep(session: Session): Promise<void> {
    if (this.ended || this.idleMs === 0 || Date.now() - session.openedAt > MAX_AGE_MS) {
      await session.end();
      return;
    }
    session.release();
    const timer = setTimeout(() => {
      this.kept = this.kept.filter((x) => x !== k);
      session.end().catch(() => {});
    }, this.idleMs);
    const k: Kept = { session, timer };
    // A kept session never keeps the process alive (its socket is unref'd by release()).
    Deno.unrefTimer(timer as unknown as number);
    this.kept.push(k);
  }

  /** Closes every kept session, and keeps none from now on: the client is ending. */
  async closeAll(): Promise<void> {
    this.ended = true;
    const all = this.kept.splice(0);
    for (const k of all) clearTimeout(k.timer);
    await Promise.all(all.map((k) => k.session.end().catch(() => {})));
  }

  /** Sessions kept now, for tests. */
  get size(): number {
    return this.kept.length;
  }
}
