// `deno task retention [--dry-run] [--batch N]`: applies the snapshot retention policy of
// pitr.settings where pg_cron does not schedule it; `--dry-run` lists what it would drop.
import { parseArgs } from "node:util";
import { configuredDatabaseUrl, connect } from "../db/client.ts";
import { applyRetention, expiredSnapshots } from "../restore/retention.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { "dry-run": { type: "boolean", default: false }, batch: { type: "string" } },
});
const url = configuredDatabaseUrl();
const batch = values.batch === undefined ? undefined : Number(values.batch);
if (!url || (batch !== undefined && !(Number.isInteger(batch) && batch > 0))) {
  console.error("usage: SUPABASE_DB_URL=postgres://… deno task retention [--dry-run] [--batch N]");
  Deno.exit(2);
}

const sql = connect(url, { max: 1, sessions: 0 });
try {
  if (values["dry-run"]) {
    const expired = await expiredSnapshots(sql);
    for (const e of expired) {
      console.log(
        `${e.id} tenant ${e.tenant_id} ${e.kind} ${e.created_at.toISOString()}: ${e.reason}`,
      );
    }
    console.log(`${expired.length} snapshots expired`);
  } else {
    console.log(`dropped ${await applyRetention(sql, { batch })} expired snapshots`);
  }
} catch (e) {
  console.error(`pitr retention: ${(e as Error).message}`);
  Deno.exitCode = 1;
} finally {
  await sql.end({ timeout: 5 });
}
