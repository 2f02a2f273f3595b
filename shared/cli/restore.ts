// `deno task restore --snapshot <id> [--tables a,b] [--strategy merge]`: the same engine as the
// pitr-execute function, for tenants too large for an Edge Function's wall clock. Run it on any
// machine that reaches the database; it writes the same history rows, so pitr-status follows it.
import { parseArgs } from "node:util";
import { configuredDatabaseUrl, connect } from "../db/client.ts";
import { getSnapshot } from "../restore/snapshot.ts";
import { createRestore, getStatus } from "../restore/history.ts";
import { executeRestore } from "../restore/execute.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    snapshot: { type: "string" },
    tables: { type: "string" },
    strategy: { type: "string", default: "overwrite" },
    "idempotency-key": { type: "string" },
  },
});
const url = configuredDatabaseUrl();
if (!url || !values.snapshot || !["overwrite", "merge"].includes(values.strategy!)) {
  console.error(
    "usage: SUPABASE_DB_URL=postgres://… deno task restore --snapshot <id> [--tables a,b] [--strategy overwrite|merge]",
  );
  Deno.exit(2);
}

const sql = connect(url, { max: 4 });
try {
  const snapshot = await getSnapshot(sql, values.snapshot);
  const { id } = await createRestore(sql, {
    snapshotId: snapshot.snapshot_id,
    tenantId: snapshot.tenant_id,
    tables: values.tables?.split(",").map((t) => t.trim()).filter(Boolean),
    strategy: values.strategy as "overwrite" | "merge",
    idempotencyKey: values["idempotency-key"],
    initiatedBy: "cli",
  });
  console.log(
    `restore ${id} of tenant ${snapshot.tenant_id} from snapshot ${snapshot.snapshot_id}`,
  );
  const ticker = setInterval(async () => {
    const s = await getStatus(sql, id).catch(() => null);
    if (s) console.log(`${s.status} ${s.progress_pct}% ${s.current_step ?? ""}`);
  }, 2000);
  const status = await executeRestore(sql, id);
  clearInterval(ticker);
  console.log(JSON.stringify(status, null, 2));
  Deno.exitCode = status.status === "completed" ? 0 : 1;
} catch (e) {
  console.error((e as Error).message);
  Deno.exitCode = 1;
} finally {
  await sql.end();
}
