// The README's walkthrough, run as written against `deno task start`: every command of its shell
// blocks in order, through bash, with the values in angle brackets taken from earlier answers as a
// person would copy them. Each answer must be a success, and the tenant's rows are checked at each
// step that changes them. The README cannot drift from the product.
import assert from "node:assert/strict";
import { cleanup, dbTest, emptyDatabase } from "./_db.ts";

const repo = new URL("..", import.meta.url).pathname;
const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
const section = readme.slice(
  readme.indexOf("<!-- walkthrough:start -->"),
  readme.indexOf("<!-- walkthrough:end -->"),
);
const commands = [...section.matchAll(/```sh\n([\s\S]*?)```/g)]
  .flatMap((m) => m[1].split("\n"))
  .map((l) => l.trim())
  .filter((l) => l !== "" && !l.startsWith("#"));

const db = await emptyDatabase("walkthrough");
const port = (() => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
})();
// `deno` in the commands is this Deno.
const denoDir = Deno.execPath().slice(0, Deno.execPath().lastIndexOf("/"));
const env: Record<string, string> = {
  PATH: `${denoDir}:${Deno.env.get("PATH") ?? ""}`,
  SUPABASE_DB_URL: db.url,
  NO_COLOR: "1",
};

/** The tenant's users as the walkthrough leaves them, digested. */
async function users101(): Promise<string> {
  const [{ d }] = await db.sql<{ d: string }[]>`
    select md5(coalesce(string_agg(u::text, ',' order by u.id), '')) as d
    from public.demo_users u where tenant_id = 101`;
  return d;
}

let server: Deno.ChildProcess | undefined;

dbTest("the README's walkthrough runs as written against deno task start", async () => {
  assert.equal(commands[0], "deno task start");
  server = new Deno.Command(Deno.execPath(), {
    args: ["task", "start"],
    cwd: repo,
    env: { ...env, PORT: String(port) },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const token = await tokenFrom(server.stdout);
  // The demo loads by itself into the embedded database; here the database is configured.
  await db.sql.unsafe(await Deno.readTextFile(new URL("../shared/cli/demo.sql", import.meta.url)));

  const seen: Record<string, string> = {};
  const digests: Record<string, string> = {};
  for (const raw of commands.slice(1)) {
    let command = raw
      .replace("<token printed by deno task start>", token)
      .replace("127.0.0.1:54321", `127.0.0.1:${port}`);
    for (const [name, value] of Object.entries(seen)) command = command.replaceAll(name, value);
    assert.ok(!/<[a-z_]+>/.test(command), `a value the walkthrough did not give: ${command}`);
    const exported = /^export (\w+)=(.*)$/.exec(command);
    if (exported) {
      env[exported[1]] = exported[2];
      continue;
    }
    const out = await run(command);
    const answer = json(out);
    if (answer) {
      // An error answer is {error: {code, message}}; a restore's status has error: null.
      assert.ok(!answer.error || answer.rollback_id, `${raw}\n${out}`);
      if (raw.includes("pitr-snapshot")) {
        seen["<snapshot_id>"] = answer.snapshot_id;
        digests.clean = await users101();
      }
      if (raw.includes("pitr-diff")) seen["<key>"] = JSON.stringify(answer.rows[0].key);
      if (raw.includes("pitr-execute")) {
        assert.equal(answer.status, "completed", out);
        seen["<undo_snapshot_id>"] = answer.undo_snapshot_id;
      }
    }
    const at = /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z/.exec(out);
    if (raw.includes("clock_timestamp") && at) {
      seen["<at>"] = at[0];
      digests.at = await users101();
    }
    // The rows after each step that changes them.
    if (raw.includes('"strategy": "selective"')) {
      digests.selective = await users101();
      assert.notEqual(digests.selective, digests.clean);
    } else if (raw.includes(`{"snapshot_id": "<snapshot_id>"}'`) && raw.includes("pitr-execute")) {
      assert.equal(await users101(), digests.clean, "the whole restore brings the snapshot back");
    } else if (raw.includes("<undo_snapshot_id>")) {
      assert.equal(await users101(), digests.selective, "the undo brings the state before back");
    } else if (raw.includes('"at": "<at>"')) {
      assert.equal(await users101(), digests.at, "the restore to a moment brings it back");
    }
  }
  assert.deepEqual(Object.keys(digests).sort(), ["at", "clean", "selective"]);
});

dbTest("cleanup: deno task start", async () => {
  server?.kill("SIGTERM");
  await server?.status;
});

cleanup(db);

async function run(command: string): Promise<string> {
  const { code, stdout, stderr } = await new Deno.Command("bash", {
    args: ["-c", command],
    cwd: repo,
    env,
  }).output();
  const out = new TextDecoder().decode(stdout);
  assert.equal(code, 0, `${command}\n${out}\n${new TextDecoder().decode(stderr)}`);
  return out;
}

// deno-lint-ignore no-explicit-any
function json(text: string): any {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Reads the server's output until it prints the token, as a person would copy it. */
async function tokenFrom(stream: ReadableStream<Uint8Array>): Promise<string> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`deno task start ended:\n${text}`);
    text += value;
    const m = /export PITR_TOKEN=(\S+)/.exec(text);
    if (m) {
      // Keep draining, so the server never blocks on a full pipe.
      (async () => {
        while (!(await reader.read()).done);
      })();
      return m[1];
    }
  }
}
