// Where the local server listens: `deno task serve` and `deno task start` bind 127.0.0.1 unless
// HOST says otherwise, and refuse a host other machines can reach while the JWT secret is the
// public development one. The servers are real processes started from the repository's files.
import assert from "node:assert/strict";
import { DEV_JWT_SECRET, isLoopback, listenHost } from "../shared/cli/host.ts";

const adminUrl = Deno.env.get("PITR_TEST_ADMIN_URL");
if (!adminUrl) throw new Error("run the tests with `deno task test`");
/** Never connected to: the servers below answer no database call. */
const noDatabase = (() => {
  const u = new URL(adminUrl);
  u.pathname = "/pitr_no_such_database";
  return u.toString();
})();
const OWN_SECRET = "a-secret-of-this-deployment-only-0123456789";

function run(script: string, env: Record<string, string>) {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script],
    env: { PORT: "0", DATABASE_URL: noDatabase, SUPABASE_DB_URL: "", HOST: "", ...env },
    stdout: "piped",
    stderr: "piped",
  });
}

Deno.test("loopback addresses are 127.0.0.0/8, ::1 and localhost; nothing else is", () => {
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]", "::ffff:127.0.0.1"]) {
    assert.equal(isLoopback(h), true, h);
  }
  for (const h of ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.com", "127.0.0.256"]) {
    assert.equal(isLoopback(h), false, h);
  }
});

Deno.test("HOST unset is 127.0.0.1; a public HOST is refused with the development secret only", () => {
  assert.equal(listenHost(undefined, DEV_JWT_SECRET), "127.0.0.1");
  assert.equal(listenHost("", OWN_SECRET), "127.0.0.1");
  assert.equal(listenHost("localhost", DEV_JWT_SECRET), "localhost");
  assert.throws(() => listenHost("0.0.0.0", DEV_JWT_SECRET), /HOST=0\.0\.0\.0/);
  assert.throws(() => listenHost("::", DEV_JWT_SECRET), /SUPABASE_JWT_SECRET/);
  assert.equal(listenHost("0.0.0.0", OWN_SECRET), "0.0.0.0");
});

Deno.test({
  name: "deno task serve listens on 127.0.0.1 only by default, and says so",
  sanitizeResources: false,
  fn: async () => {
    const child = run("shared/cli/serve.ts", { SUPABASE_JWT_SECRET: DEV_JWT_SECRET }).spawn();
    try {
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let banner = "";
      while (!banner.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) break;
        banner += value;
      }
      const m = banner.match(/^pitr listening on http:\/\/127\.0\.0\.1:(\d+)\/functions\/v1\//);
      assert.ok(m, banner);
      const port = Number(m[1]);
      const res = await fetch(`http://127.0.0.1:${port}/functions/v1/openapi.json`);
      assert.equal(res.status, 200);
      await res.body?.cancel();
      // Every address of this machine that another machine could use is closed.
      const outside = Deno.networkInterfaces().filter((i) =>
        i.family === "IPv4" && !isLoopback(i.address)
      );
      for (const i of outside) {
        await assert.rejects(
          Deno.connect({ hostname: i.address, port }).then((c) => c.close()),
          Deno.errors.ConnectionRefused,
          i.address,
        );
      }
      reader.releaseLock();
    } finally {
      child.kill("SIGTERM");
      await child.status;
      await child.stdout.cancel().catch(() => {});
      await child.stderr.cancel().catch(() => {});
    }
  },
});

for (const script of ["shared/cli/serve.ts", "shared/cli/start.ts"]) {
  Deno.test(`${script} refuses HOST=0.0.0.0 with the development secret and starts nothing`, async () => {
    // start.ts uses the development secret when SUPABASE_JWT_SECRET is empty; serve.ts is given it.
    const secret = script.endsWith("serve.ts") ? DEV_JWT_SECRET : "";
    const out = await run(script, { HOST: "0.0.0.0", SUPABASE_JWT_SECRET: secret }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, stderr);
    assert.match(stderr, /HOST=0\.0\.0\.0 would let other machines call this server/);
    assert.equal(new TextDecoder().decode(out.stdout), "");
  });
}
