// A pitr server process for the load benchmark, started from shared/cli/serve.ts as a user starts
// it, with its resident memory and its database connections watched. It must never stop a process
// it did not start, nor count the benchmark's own connections as the server's.
import { connect, type Sql } from "../shared/db/client.ts";

const decoder = new TextDecoder();

export class ServedPitr {
  private constructor(
    private child: Deno.ChildProcess,
    readonly origin: string,
    private done: Promise<void>,
  ) {}

  /**
   * Starts the server as `deno task serve` does (the task's own command line, V8 flags included,
   * run directly so that its pid is the server's), on a free port of 127.0.0.1, and waits for its
   * banner.
   */
  static async start(env: Record<string, string>): Promise<ServedPitr> {
    const root = new URL("../", import.meta.url);
    const task: string =
      JSON.parse(await Deno.readTextFile(new URL("deno.json", root))).tasks.serve;
    const [deno, ...args] = task.split(/\s+/);
    if (deno !== "deno" || args[0] !== "run") throw new Error(`unexpected serve task: ${task}`);
    const child = new Deno.Command(Deno.execPath(), {
      args,
      cwd: root.pathname,
      env: { PORT: "0", HOST: "", SUPABASE_DB_URL: "", ...env },
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.getReader();
    let banner = "";
    while (!banner.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`the server stopped before listening: ${banner}`);
      banner += decoder.decode(value);
    }
    const m = banner.match(/http:\/\/(127\.0\.0\.1:\d+)\/functions\/v1\//);
    if (!m) throw new Error(`unexpected banner: ${banner}`);
    // Keep reading, so that a full pipe never blocks the server.
    const done = (async () => {
      while (!(await reader.read()).done);
    })();
    return new ServedPitr(child, `http://${m[1]}/functions/v1`, done);
  }

  get pid(): number {
    return this.child.pid;
  }

  async stop(): Promise<void> {
    this.child.kill("SIGTERM");
    await this.child.status;
    await this.done.catch(() => {});
  }
}

function statusField(pid: number, field: "VmRSS" | "VmHWM"): number {
  const text = Deno.readTextFileSync(`/proc/${pid}/status`);
  const m = text.match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/**
 * Peak resident memory of a process over a stretch of work: the kernel's high-water mark (VmHWM),
 * reset at the start through /proc/<pid>/clear_refs, and a sample of VmRSS every 10 ms in case
 * the reset is not allowed. Linux only.
 */
export class PeakRss {
  private peak = 0;
  private timer: ReturnType<typeof setInterval>;
  private exact: boolean;

  constructor(private pid: number) {
    try {
      Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
      this.exact = true;
    } catch {
      this.exact = false;
    }
    this.sample();
    this.timer = setInterval(() => this.sample(), 10);
  }

  private sample() {
    this.peak = Math.max(this.peak, statusField(this.pid, "VmRSS"));
  }

  /** Stops watching; the peak in bytes. */
  stop(): number {
    clearInterval(this.timer);
    this.sample();
    return this.exact ? Math.max(this.peak, statusField(this.pid, "VmHWM")) : this.peak;
  }
}

/**
 * The most connections the server held at once, from pg_stat_activity (its application_name is
 * 'pitr'; the benchmark's own clients use another), sampled every 10 ms on a connection of its own.
 * Parallel workers of its queries carry the same name but are not connections (they come from
 * max_worker_processes, not max_connections), so only client backends count.
 */
export class PeakConnections {
  private peak = 0;
  private running = true;
  private loop: Promise<void>;

  private constructor(private sql: Sql) {
    this.loop = (async () => {
      while (this.running) {
        const [{ n }] = await this.sql<{ n: number }[]>`
          select count(*)::int as n from pg_stat_activity
          where application_name = 'pitr' and datname = current_database()
            and backend_type = 'client backend'`;
        this.peak = Math.max(this.peak, n);
        await new Promise((ok) => setTimeout(ok, 10));
      }
    })();
  }

  static watch(url: string): PeakConnections {
    return new PeakConnections(connect(url, { max: 1, application: "pitr_bench_monitor" }));
  }

  async stop(): Promise<number> {
    this.running = false;
    await this.loop;
    await this.sql.end({ timeout: 5 });
    return this.peak;
  }
}
