// The HTTP contract's inputs as zod schemas, checked once at the edge; the types derive from them.
// It must never let an unknown field or value through: strict objects, closed enums.
import { z } from "zod";
import { BadRequest } from "../restore/errors.ts";

/**
 * Text that is stored or compared in PostgreSQL, whose text type cannot hold U+0000: refused here
 * as bad input rather than failing in the database as an internal error.
 */
const Text = z.string().refine((s) => !s.includes("\u0000"), "must not contain U+0000");

/** A tenant id is text; a JSON number is accepted and becomes its decimal text. */
export const TenantId = z.union([
  Text.trim().min(1).max(200),
  z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
]).transform(String);

/** `table` (meaning public.table) or `schema.table`; checked against the catalog, never quoted here. */
export const TableList = z.array(z.string().min(1).max(300)).min(1).max(500);

export const Strategy = z.enum(["overwrite", "merge", "selective"]);

/**
 * strategy selective: per table, the rows chosen by the keys pitr-diff shows (an object of the
 * primary key's columns, or the opaque text of a table without one), or the whole table.
 */
export const Selection = z.array(z.union([
  z.strictObject({
    table: z.string().min(1).max(300),
    keys: z.array(z.union([z.record(z.string(), z.unknown()), Text.max(200)])).min(1).max(10_000),
  }),
  z.strictObject({ table: z.string().min(1).max(300), all: z.literal(true) }),
])).min(1).max(500);

const Id = z.string().min(1).max(100);

export const SnapshotCreate = z.strictObject({
  tenant_id: TenantId,
  tables: TableList.optional(),
  label: Text.max(500).nullable().optional(),
  /** Keep a snapshot of a tenant without rows: without it, that is 422 tenant_empty. */
  allow_empty: z.boolean().optional(),
});

export const SnapshotList = z.strictObject({ tenant_id: TenantId });

const MOMENT =
  /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,6})?(?:Z|[+-](\d{2}):(\d{2}))$/;

/**
 * A real calendar moment that JavaScript and PostgreSQL read alike: no February 30th (read as
 * March 1st), no hour 24, no offset past ±23:59, and a year from 1970 to 9998, so that neither
 * the offset nor a conversion can take it out of the range either side accepts (year 0 and
 * year 10000 are errors in PostgreSQL). No change log reaches back before 1970.
 */
function isMoment(text: string): boolean {
  const m = MOMENT.exec(text);
  if (!m) return false;
  const [y, mo, d, h, mi, s, oh, om] = m.slice(1).map((x) => Number(x ?? 0));
  const daysInMonth = mo >= 1 && mo <= 12 ? new Date(Date.UTC(y, mo, 0)).getUTCDate() : 0;
  return y >= 1970 && y <= 9998 && d >= 1 && d <= daysInMonth && h <= 23 && mi <= 59 &&
    s <= 59 && oh <= 23 && om <= 59;
}

/**
 * A moment as ISO 8601 text with its zone, e.g. `2026-11-28T14:32:00.123456Z`. It stays text so
 * that microseconds survive; the engine decides whether it is past and inside the change log.
 */
export const At = z.string().max(64).refine(
  isMoment,
  "must be an ISO 8601 timestamp with a zone, like 2026-11-28T14:32:00.123456Z (a real date " +
    "and time, from 1970 on)",
);

/**
 * What a restore starts from, in one of two forms and never both: `{snapshot_id}`, or
 * `{tenant_id, at}` (the tenant as it was at that moment, rebuilt from the change log).
 */
export type Source =
  | { snapshot_id: string; tenant_id?: undefined; at?: undefined }
  | { snapshot_id?: undefined; tenant_id: string; at: string };

const SourceFields = {
  snapshot_id: Id.optional(),
  tenant_id: TenantId.optional(),
  at: At.optional(),
};

function oneSource<T extends { snapshot_id?: string; tenant_id?: string; at?: string }>(
  v: T,
  ctx: z.RefinementCtx,
) {
  const bySnapshot = v.snapshot_id !== undefined;
  const byMoment = v.at !== undefined || v.tenant_id !== undefined;
  if (bySnapshot && byMoment) {
    ctx.addIssue({
      code: "custom",
      path: [],
      message: "give either snapshot_id, or tenant_id and at, not both",
    });
  } else if (!bySnapshot && !byMoment) {
    ctx.addIssue({
      code: "custom",
      path: [],
      message: "snapshot_id, or tenant_id and at, is required",
    });
  } else if (byMoment && v.tenant_id === undefined) {
    ctx.addIssue({ code: "custom", path: ["tenant_id"], message: "required with at" });
  } else if (byMoment && v.at === undefined) {
    ctx.addIssue({ code: "custom", path: ["at"], message: "required with tenant_id" });
  }
}

const asSource = <T extends { snapshot_id?: string; tenant_id?: string; at?: string }>(v: T) =>
  v as Omit<T, keyof Source> & Source;

export const ValidateBody = z.strictObject({ ...SourceFields, tables: TableList.optional() })
  .superRefine(oneSource).transform(asSource);

export const PlanBody = z.strictObject({
  ...SourceFields,
  tables: TableList.optional(),
  strategy: Strategy.optional(),
  select: Selection.optional(),
  with_dependencies: z.boolean().optional(),
}).superRefine(oneSource).superRefine((v, ctx) => {
  const selective = v.strategy === "selective";
  if (selective && v.select === undefined) {
    ctx.addIssue({ code: "custom", path: ["select"], message: "required with strategy selective" });
  }
  if (!selective && (v.select !== undefined || v.with_dependencies !== undefined)) {
    ctx.addIssue({
      code: "custom",
      path: [v.select !== undefined ? "select" : "with_dependencies"],
      message: "only with strategy selective",
    });
  }
  if (selective && v.tables !== undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["tables"],
      message: "not with strategy selective (select names the tables)",
    });
  }
}).transform(asSource);

export const ExecuteBody = PlanBody;

export const Change = z.enum(["insert", "update", "delete"]);

/** `POST pitr-diff`: one table of a snapshot (or of a moment), one page of its rows. */
export const DiffBody = z.strictObject({
  ...SourceFields,
  table: z.string().min(1).max(300),
  change: Change.optional(),
  limit: z.number().int().min(1).max(1000).optional(),
  cursor: Text.min(1).max(4000).optional(),
}).superRefine(oneSource).transform(asSource);

export const ExecuteQuery = z.strictObject({
  wait: z.enum(["true", "false"]).optional(),
});

/**
 * The Idempotency-Key header, bounded: it is stored in a unique index, whose rows PostgreSQL
 * limits to about 2.7 kB, and a key is a short id (a uuid, an incident number), never a body.
 */
export const ExecuteHeaders = z.object({
  "idempotency-key": z.string().max(255).optional(),
});

/** A query's positive whole number up to `max`, written in digits. */
const Count = (max: number) =>
  z.string().regex(/^[0-9]{1,6}$/, "must be a whole number").transform(Number)
    .pipe(z.number().int().min(1).max(max));

/**
 * `?rollback_id=` (one restore's status), or `?tenant_id=&limit=` (the tenant's restores, newest
 * first: how someone who lost a 202 answer finds the running one).
 */
export const StatusQuery = z.strictObject({
  rollback_id: Id.optional(),
  tenant_id: TenantId.optional(),
  limit: Count(100).optional(),
}).superRefine((q, ctx) => {
  if (q.rollback_id !== undefined && q.tenant_id !== undefined) {
    ctx.addIssue({ code: "custom", path: [], message: "give rollback_id or tenant_id, not both" });
  } else if (q.rollback_id === undefined && q.tenant_id === undefined) {
    ctx.addIssue({ code: "custom", path: [], message: "rollback_id or tenant_id is required" });
  } else if (q.limit !== undefined && q.tenant_id === undefined) {
    ctx.addIssue({ code: "custom", path: ["limit"], message: "only with tenant_id" });
  }
});

/** `POST pitr-execute/cancel {rollback_id}`, or `DELETE pitr-execute?rollback_id=`. */
export const CancelBody = z.strictObject({ rollback_id: Id });
export const CancelQuery = CancelBody;

/**
 * `POST pitr-drill`: one tenant's drill, or (service role, no tenant_id) one fleet call that drills
 * the least recently drilled tenants for at most `budget_s` seconds (default: the setting, 100 s).
 */
export const DrillBody = z.strictObject({
  tenant_id: TenantId.optional(),
  budget_s: z.number().positive().max(140).optional(),
}).superRefine((b, ctx) => {
  if (b.tenant_id !== undefined && b.budget_s !== undefined) {
    ctx.addIssue({ code: "custom", path: ["budget_s"], message: "only for a fleet call" });
  }
});

/** `GET pitr-drill?tenant_id=&limit=`: the drill report, failures first. */
export const DrillQuery = z.strictObject({
  tenant_id: TenantId.optional(),
  limit: Count(10000).optional(),
});

export type SnapshotCreate = z.infer<typeof SnapshotCreate>;
export type ValidateBody = z.output<typeof ValidateBody>;
export type PlanBody = z.output<typeof PlanBody>;
export type ExecuteBody = z.output<typeof ExecuteBody>;
export type DrillBody = z.output<typeof DrillBody>;
export type DiffBody = z.output<typeof DiffBody>;

const REQUIRED = "\u0000required"; // no message of zod's or ours can be this

/**
 * Parses `input` or throws a 400 naming the offending fields (never echoing their values); a
 * missing field is "<name> is required".
 */
export function parse<S extends z.ZodType>(schema: S, input: unknown): z.output<S> {
  const result = schema.safeParse(input, {
    error: (issue) => issue.input === undefined ? REQUIRED : undefined,
  });
  if (result.success) return result.data;
  const problems = result.error.issues.map((i) => {
    const where = i.path.length ? i.path.join(".") : "body";
    if (i.message === REQUIRED) return `${where} is required`;
    if (i.code === "unrecognized_keys") {
      return `${where}: unknown field${i.keys.length > 1 ? "s" : ""} ${i.keys.join(", ")}`;
    }
    return `${where}: ${i.message}`;
  });
  throw new BadRequest("invalid_request", problems.join("; "));
}

/** Reads a JSON body; an empty body is `{}`, anything unparsable is 400 malformed_json. */
export async function readJson(req: Request): Promise<unknown> {
  const text = await req.text();
  if (text.trim() === "") return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new BadRequest("malformed_json", "the request body is not valid JSON");
  }
}

/** The query string as a plain object; a repeated key is 400 rather than silently one of them. */
export function queryOf(url: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of new URL(url).searchParams) {
    // supabase-js adds it when a region is chosen; it means nothing here.
    if (k === "forceFunctionRegion") continue;
    if (k in out) throw new BadRequest("invalid_request", `query: ${k} given more than once`);
    out[k] = v;
  }
  return out;
}
