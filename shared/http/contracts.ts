// The HTTP contract's inputs as zod schemas, checked once at the edge; the types derive from them.
// It must never let an unknown field or value through: strict objects, closed enums.
import { z } from "zod";
import { BadRequest } from "../restore/errors.ts";

/** A tenant id is text; a JSON number is accepted and becomes its decimal text. */
export const TenantId = z.union([
  z.string().trim().min(1).max(200),
  z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
]).transform(String);

/** `table` (meaning public.table) or `schema.table`; checked against the catalog, never quoted here. */
export const TableList = z.array(z.string().min(1).max(300)).min(1).max(500);

export const Strategy = z.enum(["overwrite", "merge"]);

const Id = z.string().min(1).max(100);

export const SnapshotCreate = z.strictObject({
  tenant_id: TenantId,
  tables: TableList.optional(),
  label: z.string().max(500).nullable().optional(),
});

export const SnapshotList = z.strictObject({ tenant_id: TenantId });

export const ValidateBody = z.strictObject({ snapshot_id: Id });

export const PlanBody = z.strictObject({
  snapshot_id: Id,
  tables: TableList.optional(),
  strategy: Strategy.optional(),
});

export const ExecuteBody = PlanBody;

export const ExecuteQuery = z.strictObject({
  wait: z.enum(["true", "false"]).optional(),
});

export const StatusQuery = z.strictObject({ rollback_id: Id });

export const DrillBody = z.strictObject({ tenant_id: TenantId.optional() });

export type SnapshotCreate = z.infer<typeof SnapshotCreate>;
export type PlanBody = z.infer<typeof PlanBody>;
export type ExecuteBody = z.infer<typeof ExecuteBody>;
export type DrillBody = z.infer<typeof DrillBody>;

/** Parses `input` or throws a 400 naming the offending fields (never echoing their values). */
export function parse<S extends z.ZodType>(schema: S, input: unknown): z.output<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const problems = result.error.issues.map((i) => {
    const where = i.path.length ? i.path.join(".") : "body";
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
