// The failures a caller can act on, each with a stable code and the HTTP status it maps to.
// It must never carry SQL text or row values in a message.

export class PitrError extends Error {
  /** More of the error object a caller acts on (rows a selection lacks); never row values. */
  details?: Record<string, unknown>;

  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
    readonly table?: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** Bad input: malformed JSON, unknown fields, a table that is not protected. */
export class BadRequest extends PitrError {
  constructor(code: string, message: string) {
    super(code, message, 400);
  }
}

export class NotFound extends PitrError {
  constructor(code: string, message: string) {
    super(code, message, 404);
  }
}

/** A restore of that tenant is pending or running; an idempotency key reused with another body. */
export class Conflict extends PitrError {
  constructor(code: string, message: string) {
    super(code, message, 409);
  }
}

/** The snapshot is damaged or no longer fits the live schema, or the plan has a blocker. */
export class Unprocessable extends PitrError {
  constructor(code: string, message: string, table?: string) {
    super(code, message, 422, table);
  }
}

/** A restore that began and failed; recorded in its history row, then rolled back. */
export class RestoreFailed extends PitrError {
  constructor(code: string, message: string, table?: string) {
    super(code, message, 500, table);
  }
}

// SQLSTATE codes the engine handles by name.
export const PG = {
  UNIQUE_VIOLATION: "23505",
  EXCLUSION_VIOLATION: "23P01",
  FOREIGN_KEY_VIOLATION: "23503",
  NOT_NULL_VIOLATION: "23502",
  CHECK_VIOLATION: "23514",
  LOCK_NOT_AVAILABLE: "55P03",
  QUERY_CANCELED: "57014",
  DEADLOCK_DETECTED: "40P01",
  SERIALIZATION_FAILURE: "40001",
  // Raised by the engine's own SQL functions (supabase/migrations/*_pitr_engine.sql).
  PITR_NOT_FOUND: "PT404",
  PITR_INCOMPATIBLE: "PT422",
  // The change log crosses a schema change of the table (20261128100600_capture.sql).
  PITR_SCHEMA_CHANGED: "PT423",
} as const;

export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown })?.code;
  return typeof code === "string" ? code : undefined;
}
