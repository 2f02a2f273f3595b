// The one place where a thrown error becomes an HTTP answer: `{ "error": { "code", "message" } }`.
// It must never put SQL text, query parameters or row values into an answer or a log line.
import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import { Busy } from "../db/budget.ts";
import { PG, PitrError, sqlState } from "../restore/errors.ts";
import { RestoreInProgress } from "../restore/history.ts";

/** No token, or one that is expired, forged, unsigned or unreadable. */
export class Unauthorized extends PitrError {
  constructor(code: string, message: string) {
    super(code, message, 401);
  }
}

/** A valid token whose role or tenant may not do this. */
export class Forbidden extends PitrError {
  constructor(code: string, message: string) {
    super(code, message, 403);
  }
}

/** The service cannot work with its configuration (a transaction pooler, no JWT key). */
export class Unavailable extends PitrError {
  constructor(code: string, message: string) {
    super(code, message, 503);
  }
}

/** A known function called with a method it does not take; `Allow` lists those it takes. */
export class MethodNotAllowed extends PitrError {
  constructor(fn: string, method: string, readonly allow: string[]) {
    super("method_not_allowed", `${fn} takes ${allow.join(" or ")}, not ${method}`, 405);
  }
}

export function errorBody(code: string, message: string, more: Record<string, unknown> = {}) {
  return { error: { code, message, ...more } };
}

/** hono's onError: PitrError keeps its status and code; anything else is a logged 500. */
export function onError(err: Error, c: Context): Response {
  if (err instanceof MethodNotAllowed) {
    c.header("Allow", err.allow.join(", "));
  }
  if (err instanceof RestoreInProgress) {
    // The restore to follow or cancel: the one thing the caller needs next.
    return c.json(errorBody(err.code, err.message, { rollback_id: err.rollbackId }), 409);
  }
  if (err instanceof PitrError && err.status < 500) {
    return c.json(errorBody(err.code, err.message, err.details), err.status as 400);
  }
  if (err instanceof Busy) {
    // Nothing was done: the caller may send the same request again after this many seconds.
    return c.json(errorBody(err.code, err.message), 503, {
      "Retry-After": String(err.retryAfterSeconds),
    });
  }
  if (err instanceof PitrError && err.status === 503) {
    return c.json(errorBody(err.code, err.message), 503);
  }
  // The engine's own SQL functions raise these with messages it wrote (names, never row values).
  if (sqlState(err) === PG.PITR_INCOMPATIBLE) {
    return c.json(errorBody("schema_incompatible", err.message), 422);
  }
  if (sqlState(err) === PG.PITR_NOT_FOUND) {
    return c.json(errorBody("not_found", err.message), 404);
  }
  if (err instanceof HTTPException && err.status < 500) {
    return c.json(errorBody("bad_request", err.message || "bad request"), err.status);
  }
  const id = crypto.randomUUID();
  // The code and message only: a PostgreSQL error's detail and a query's parameters can hold
  // tenant rows.
  const sqlstate = (err as { code?: unknown })?.code;
  console.error(
    `pitr internal error ${id}: ${err?.name ?? "Error"}`,
    typeof sqlstate === "string" ? sqlstate : "",
    err?.message,
  );
  return c.json(errorBody("internal", `internal error ${id}`), 500);
}
