// The connection budget of one service process: its pool and every dedicated session (snapshots,
// plans, validations, restores, drills) drawn from one number, PITR_MAX_CONNECTIONS. It must never
// let the process hold more connections than that, nor hold one while work waits for its turn.
import { PitrError } from "../restore/errors.ts";
import { Gate } from "./gate.ts";

/** Fits the smallest Supabase compute (60 connections for everything); see the README's table. */
export const DEFAULT_MAX_CONNECTIONS = 4;

/** Too much work at once: nothing was done, come back after `retryAfterSeconds`. */
export class Busy extends PitrError {
  constructor(message: string, readonly retryAfterSeconds: number) {
    super("busy", message, 503);
  }
}

export interface BudgetSettings {
  /** Connections the process may hold at once, pool and sessions together. */
  connections: number;
  /** Work that may wait for a session before more is refused. */
  queue: number;
  /** How long work waits for a session before it is refused. */
  waitMs: number;
}

export function budgetFromEnv(): BudgetSettings {
  return {
    connections: positive("PITR_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS),
    queue: positive("PITR_QUEUE_MAX", 64),
    waitMs: positive("PITR_QUEUE_WAIT_MS", 30_000),
  };
}

function positive(name: string, fallback: number): number {
  const text = Deno.env.get(name);
  if (text === undefined || text === "") return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a whole number ≥ 1`);
  return n;
}

/**
 * Sessions get the larger half: everything that reads or writes whole tenants runs on one
 * (snapshots, plans, validations, restores, drills), while the pool serves only short queries
 * (status, lists, a restore's progress), which a couple of connections keep up with. A budget of
 * 1 is a pool alone (no session can be opened: the tools that use it run no transaction).
 */
export function split(connections: number): { pool: number; sessions: number } {
  const pool = Math.max(1, Math.floor(connections / 2));
  return { pool, sessions: connections - pool };
}

/**
 * The longest accepted work (a recorded restore, which goes ahead of new work) waits for a
 * session: with its tenant's turn before it (up to PITR_LOCK_TIMEOUT_MS, 5 s), it starts well
 * within the 30 s after which a pending restore that never started is reported abandoned
 * (PITR_HEARTBEAT_STALE_MS).
 */
export const URGENT_WAIT_MS = 15_000;

/** The gate every dedicated session passes: its slots are the budget's sessions. */
export function sessionGate(sessions: number, settings: BudgetSettings): Gate {
  return new Gate({
    slots: sessions,
    queue: settings.queue,
    waitMs: settings.waitMs,
    urgentWaitMs: Math.min(settings.waitMs, URGENT_WAIT_MS),
    refuse: (reason, retryAfter, waitedMs) =>
      new Busy(
        reason === "full"
          ? `${settings.queue} requests are already waiting for a database connection; ` +
            "nothing was done, try again later"
          : `no database connection was free within ${waitedMs} ms ` +
            `(PITR_MAX_CONNECTIONS = ${settings.connections}); nothing was done, try again later`,
        retryAfter,
      ),
  });
}
