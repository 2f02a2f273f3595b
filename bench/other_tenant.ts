// Another tenant's writes: a loop of single-row UPDATEs on its own connection, timing each one.
// It must never touch the tenant being restored, and it always ends (bounded by count and time).
import { connect, type Sql } from "../shared/db/client.ts";

export class OtherTenantWriter {
  private ids: string[] = [];
  private constructor(private sql: Sql, readonly tenant: number) {}

  static async open(url: string, tenant: number): Promise<OtherTenantWriter> {
    const w = new OtherTenantWriter(connect(url, { max: 1 }), tenant);
    const rows = await w.sql<{ id: string }[]>`
      select id from public.users where tenant_id = ${tenant} order by id limit 1000`;
    if (rows.length === 0) throw new Error(`tenant ${tenant} has no users to update`);
    w.ids = rows.map((r) => r.id);
    return w;
  }

  /**
   * Runs single-row UPDATEs one after another until `stop()` resolves true, `maxCount` updates
   * or `maxSeconds`; returns each one's latency in milliseconds.
   */
  async run(
    options: { maxCount: number; maxSeconds: number; stop?: () => boolean },
  ): Promise<number[]> {
    const latencies: number[] = [];
    const deadline = performance.now() + options.maxSeconds * 1000;
    let i = 0;
    while (latencies.length < options.maxCount && performance.now() < deadline) {
      if (options.stop?.()) break;
      const id = this.ids[(i++ * 7919) % this.ids.length];
      const start = performance.now();
      const r = await this.sql`update public.users
        set updated_at = clock_timestamp() where id = ${id} and tenant_id = ${this.tenant}`;
      latencies.push(performance.now() - start);
      if (r.count !== 1) throw new Error(`the other tenant's update touched ${r.count} rows`);
    }
    return latencies;
  }

  async close(): Promise<void> {
    await this.sql.end({ timeout: 5 });
  }
}
