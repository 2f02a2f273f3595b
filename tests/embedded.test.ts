// The embedded PostgreSQL as root from a 0700 folder, beside a second start, and after SIGKILL.
// A test here must never leave a cluster, a process or a folder behind.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { connect } from "../shared/db/client.ts";
import { DataDirInUse, startEmbedded } from "../shared/db/embedded.ts";
import { cleanup, dbTest, testDatabase } from "./_db.ts";

const db = await testDatabase("embedded");
const root = Deno.uid() === 0;
const REPO = fileURLToPath(new URL("..", import.meta.url));

async function gone(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => false, () => true);
}

dbTest(
  "as root, a cluster for a 0700 folder runs as postgres from outside it, and is removed whole",
  async () => {
    const home = await Deno.makeTempDir({ prefix: "pitr-0700-" });
    try {
      assert.equal((await Deno.stat(home)).mode! & 0o777, 0o700);
      const server = await startEmbedded(`${home}/.pitr/pg`);
      try {
        assert.equal(server.relocated, true);
        assert.match(server.dataDir, /^\/(var\/)?tmp\/pitr-[0-9a-f]{16}\/pg$/);
        const sql = connect(server.url, { max: 1 });
        const [r] = await sql<{ dir: string; who: string }[]>`
          select current_setting('data_directory') as dir, current_user as who`;
        await sql.end();
        assert.deepEqual(r, { dir: server.dataDir, who: "postgres" });
        const owner = (await Deno.stat(server.dataDir)).uid;
        assert.notEqual(owner, 0, "the data belongs to the postgres user");
        // The user's folder is as it was: still 0700, and no cluster in it.
        assert.equal((await Deno.stat(home)).mode! & 0o777, 0o700);
        assert.deepEqual([...Deno.readDirSync(`${home}/.pitr`)], []);
      } finally {
        await server.stop();
        await server.remove();
      }
      assert.ok(await gone(server.dataDir), server.dataDir);
      assert.ok(await gone(server.dataDir.replace(/\/pg$/, "")), "its folder too");
    } finally {
      await Deno.remove(home, { recursive: true });
    }
  },
  { ignore: !root }, // not root: PostgreSQL runs as this user, who can enter its own folders
);

/** Runs `deno task start`'s program from `cwd` with `env`; its exit code and output. */
async function start(cwd: string, env: Record<string, string>) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", `${REPO}deno.json`, `${REPO}shared/cli/start.ts`],
    cwd,
    env: { SUPABASE_DB_URL: "", DATABASE_URL: "", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

dbTest(
  "a second deno task start while one runs says so in one line, without a stack trace",
  async () => {
    const folder = await Deno.makeTempDir({ prefix: "pitr-start-" });
    // The first start's PostgreSQL, where `deno task start` keeps it for that folder.
    const first = await startEmbedded(`${folder}/.pitr/pg`);
    try {
      await assert.rejects(startEmbedded(`${folder}/.pitr/pg`), DataDirInUse);
      const second = await start(folder, {});
      assert.equal(second.code, 1);
      assert.equal(second.stdout, "");
      const lines = second.stderr.trimEnd().split("\n");
      assert.equal(lines.length, 1, second.stderr);
      assert.match(lines[0], /^pitr start: already running: another PostgreSQL \(pid \d+\)/);
      assert.ok(lines[0].includes(first.dataDir), lines[0]);
    } finally {
      await first.stop();
      await first.remove();
      await Deno.remove(folder, { recursive: true });
    }
    assert.ok(await gone(first.dataDir));

    // With a database URL, the second one meets the first one's port.
    const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      const port = (busy.addr as Deno.NetAddr).port;
      const second = await start(REPO, { SUPABASE_DB_URL: db.url, PORT: String(port) });
      assert.equal(second.code, 1);
      assert.equal(second.stdout, "");
      assert.deepEqual(second.stderr.trimEnd().split("\n"), [
        `pitr start: port ${port} is in use (another \`deno task start\`?): stop it, or set PORT ` +
        "to another port",
      ]);
    } finally {
      busy.close();
    }
  },
);

dbTest("the server stops when the process that started it is killed with SIGKILL", async () => {
  const folder = await Deno.makeTempDir({ prefix: "pitr-kill-" });
  try {
    const script = `${folder}/start.ts`;
    await Deno.writeTextFile(
      script,
      `import { startEmbedded } from "${new URL("../shared/db/embedded.ts", import.meta.url)}";
      const s = await startEmbedded("${folder}/.pitr/pg");
      console.log(s.dataDir);`,
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", `${REPO}deno.json`, script],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const dataDir = (await reader.read()).value!.trim();
    const pid = (await Deno.readTextFile(`${dataDir}/postmaster.pid`)).split("\n")[0];
    assert.ok(!await gone(`/proc/${pid}`), "the server runs");
    child.kill("SIGKILL");
    await child.status;
    await reader.cancel();
    for (let i = 0; i < 100 && !await gone(`/proc/${pid}`); i++) {
      await new Promise((ok) => setTimeout(ok, 50));
    }
    assert.ok(await gone(`/proc/${pid}`), `PostgreSQL ${pid} outlived its process`);
    const server = await startEmbedded(`${folder}/.pitr/pg`); // the folder is free again
    await server.stop();
    await server.remove();
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
});

dbTest("a cluster made for a run is deleted by remove(), its files with it", async () => {
  const server = await startEmbedded(`.pitr/test-remove-${Deno.pid}`);
  await server.stop();
  assert.ok(!await gone(`${server.dataDir}/PG_VERSION`));
  await server.remove();
  assert.ok(await gone(server.dataDir));
});

cleanup(db);
