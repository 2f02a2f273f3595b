// Who may learn what, over a real socket: a user token's audience and issuer; an id of another
// tenant's snapshot or restore answered exactly as an id that does not exist; the project's key
// set out of reach answered 503 within its timeout. Each checks the rows as well as the answer.
import assert from "node:assert/strict";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { createApp } from "../shared/http/app.ts";
import { type AuthConfig, authConfigFromEnv } from "../shared/http/auth.ts";
import { createRestore } from "../shared/restore/history.ts";
import { takeSnapshot } from "../shared/restore/snapshot.ts";
import { cleanup, dbTest, tenantDigest, testDatabase } from "./_db.ts";
import { TEST_SECRET, token, userToken } from "./_http.ts";

const db = await testDatabase("http_auth");
const sql = db.sql;
await sql`select public.seed_tenant(601, 20), public.seed_tenant(602, 20)`;

interface Answer {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
}

/** The app with `auth`, on a free port. */
function serve(auth: AuthConfig) {
  const background: Promise<unknown>[] = [];
  const app = createApp({ sql, auth, runInBackground: (work) => background.push(work) });
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, app.fetch);
  return {
    async call(
      method: "GET" | "POST" | "DELETE",
      path: string,
      bearer: string,
      body?: unknown,
    ): Promise<Answer> {
      const res = await fetch(`http://127.0.0.1:${server.addr.port}/functions/v1/${path}`, {
        method,
        headers: {
          authorization: `Bearer ${bearer}`,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: res.status, body: await res.json() };
    },
    async close() {
      await Promise.all(background);
      await server.shutdown();
    },
  };
}

/** Runs `fn` with these environment variables set (undefined: unset), then puts them back. */
async function withEnv(vars: Record<string, string | undefined>, fn: () => Promise<void>) {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, Deno.env.get(k)]));
  const apply = (v: Record<string, string | undefined>) => {
    for (const [k, x] of Object.entries(v)) {
      x === undefined ? Deno.env.delete(k) : Deno.env.set(k, x);
    }
  };
  apply(vars);
  try {
    await fn();
  } finally {
    apply(saved);
  }
}

const count = async (q: Promise<{ n: string }[]>) => Number((await q)[0].n);
const snapshotsOf = (tenant: string) =>
  count(sql`select count(*) as n from public.backup_snapshots where tenant_id = ${tenant}`);
const restoresOf = (tenant: string) =>
  count(sql`select count(*) as n from public.backup_pitr_rollback_history
    where tenant_id = ${tenant}`);

const viewerClaims = {
  role: "authenticated",
  sub: "u-601",
  app_metadata: { tenant_id: "601", pitr_role: "viewer" },
};

dbTest(
  "a user token must be for audience authenticated: another audience or none is 401",
  async () => {
    const app = serve({ jwtSecret: TEST_SECRET });
    try {
      const cases: [unknown, number][] = [
        [undefined, 401],
        ["anon", 401],
        [["api", "storage"], 401],
        ["authenticated", 200],
        [["api", "authenticated"], 200],
      ];
      for (const [aud, status] of cases) {
        const claims = aud === undefined ? viewerClaims : { ...viewerClaims, aud };
        const r = await app.call("GET", "pitr-snapshot?tenant_id=601", await token(claims));
        assert.equal(r.status, status, JSON.stringify(aud));
        if (status === 401) {
          assert.equal(r.body.error.code, "invalid_token");
          assert.match(r.body.error.message, /aud/);
        }
      }
      // The service role's tokens are not user tokens: no audience is asked of them.
      const service = await app.call(
        "GET",
        "pitr-snapshot?tenant_id=601",
        await token({
          role: "service_role",
        }),
      );
      assert.equal(service.status, 200);
    } finally {
      await app.close();
    }
  },
);

dbTest(
  "with SUPABASE_URL set a user token must come from the project's auth; without it (deno task start) any issuer",
  async () => {
    const user = (iss?: string) => {
      const jwt = new SignJWT({ ...viewerClaims, aud: "authenticated" })
        .setProtectedHeader({ alg: "HS256", typ: "JWT" }).setIssuedAt().setExpirationTime("1h");
      return (iss ? jwt.setIssuer(iss) : jwt).sign(new TextEncoder().encode(TEST_SECRET));
    };
    // What `deno task start` prints (shared/cli/start.ts): a service-role token of pitr-local.
    const local = await new SignJWT({ role: "service_role" })
      .setProtectedHeader({ alg: "HS256", typ: "JWT" }).setIssuer("pitr-local").setIssuedAt()
      .setExpirationTime("1h").sign(new TextEncoder().encode(TEST_SECRET));
    const project = "https://abcdefghijklmnopqrst.supabase.co";
    const base = {
      SUPABASE_JWT_SECRET: TEST_SECRET,
      SUPABASE_JWKS: undefined,
      SUPABASE_SECRET_KEYS: undefined,
      SUPABASE_SERVICE_ROLE_KEY: undefined,
      PITR_AUTH_ISSUER: undefined,
    };
    const statuses = async (tokens: string[]) => {
      const app = serve(authConfigFromEnv());
      try {
        const out: number[] = [];
        for (const t of tokens) {
          out.push((await app.call("GET", "pitr-snapshot?tenant_id=601", t)).status);
        }
        return out;
      } finally {
        await app.close();
      }
    };
    await withEnv({ ...base, SUPABASE_URL: project }, async () => {
      assert.equal(authConfigFromEnv().issuer, `${project}/auth/v1`);
      assert.deepEqual(
        await statuses([
          await user(`${project}/auth/v1`),
          await user("https://another-project.supabase.co/auth/v1"),
          await user(`${project}/auth/v1/`),
          await user("pitr-local"),
          await user(),
          local,
        ]),
        [200, 401, 401, 401, 401, 200],
      );
    });
    // A function that sees another URL than its users (a custom domain, the CLI's kong).
    await withEnv(
      {
        ...base,
        SUPABASE_URL: "http://kong:8000",
        PITR_AUTH_ISSUER: "http://127.0.0.1:54321/auth/v1",
      },
      async () => {
        assert.deepEqual(
          await statuses([
            await user("http://127.0.0.1:54321/auth/v1"),
            await user("http://kong:8000/auth/v1"),
          ]),
          [200, 401],
        );
      },
    );
    await withEnv({ ...base, SUPABASE_URL: undefined }, async () => {
      assert.equal(authConfigFromEnv().issuer, undefined);
      assert.deepEqual(
        await statuses([
          await user(),
          await user("pitr-local"),
          await user(`${project}/auth/v1`),
          local,
        ]),
        [200, 200, 200, 200],
      );
    });
  },
);

dbTest(
  "an id of another tenant's snapshot or restore gets the same answer as a random id, and nothing changes",
  async () => {
    const app = serve({ jwtSecret: TEST_SECRET });
    try {
      const { snapshot_id } = await takeSnapshot(sql, { tenantId: "602" });
      const { id: pending } = await createRestore(sql, {
        snapshotId: snapshot_id,
        tenantId: "602",
        strategy: "overwrite",
      });
      const service = await token({ role: "service_role" });
      // The ids exist: the service role sees them.
      assert.equal(
        (await app.call("GET", `pitr-status?rollback_id=${pending}`, service)).status,
        200,
      );
      assert.equal(
        (await app.call("POST", "pitr-validate", service, { snapshot_id })).status,
        200,
      );
      const before = {
        digest: await tenantDigest(sql, 602),
        snapshots: await snapshotsOf("602"),
        restores: await restoresOf("602"),
      };
      const calls: [
        "GET" | "POST" | "DELETE",
        (id: string) => string,
        (id: string) => unknown,
        "restore" | "snapshot",
      ][] = [
        ["GET", (id) => `pitr-status?rollback_id=${id}`, () => undefined, "restore"],
        ["POST", () => "pitr-execute/cancel", (id) => ({ rollback_id: id }), "restore"],
        ["DELETE", (id) => `pitr-execute?rollback_id=${id}`, () => undefined, "restore"],
        ["POST", () => "pitr-validate", (id) => ({ snapshot_id: id }), "snapshot"],
        ["POST", () => "pitr-plan", (id) => ({ snapshot_id: id }), "snapshot"],
        ["POST", () => "pitr-execute", (id) => ({ snapshot_id: id }), "snapshot"],
        ["POST", () => "pitr-execute?wait=true", (id) => ({ snapshot_id: id }), "snapshot"],
      ];
      const callers: [string, string][] = [
        ["another tenant's admin", await userToken("601", "admin")],
        ["another tenant's viewer", await userToken("601", "viewer")],
        ["a user without a pitr role", await userToken("601")],
        ["anon", await token({ role: "anon" })],
      ];
      for (const [who, bearer] of callers) {
        for (const [method, path, body, kind] of calls) {
          const existing = kind === "restore" ? pending : snapshot_id;
          const random = crypto.randomUUID();
          const a = await app.call(method, path(existing), bearer, body(existing));
          const b = await app.call(method, path(random), bearer, body(random));
          const what = `${who}: ${method} ${path("<id>")}`;
          assert.ok(a.status === 403 || a.status === 404, `${what}: ${a.status}`);
          assert.equal(a.status, b.status, what);
          // The same body but for the id each was asked about.
          assert.deepEqual(
            JSON.parse(JSON.stringify(a.body).replaceAll(existing, "<id>")),
            JSON.parse(JSON.stringify(b.body).replaceAll(random, "<id>")),
            what,
          );
          if (a.status === 404) assert.equal(a.body.error.code, `${kind}_not_found`, what);
        }
      }
      assert.equal(await tenantDigest(sql, 602), before.digest);
      assert.equal(await snapshotsOf("602"), before.snapshots);
      assert.equal(await restoresOf("602"), before.restores);
      const [{ status }] = await sql`select status from public.backup_pitr_rollback_history
        where id = ${pending}`;
      assert.equal(status, "pending");
      await sql`update public.backup_pitr_rollback_history set status = 'cancelled'
        where id = ${pending}`;
    } finally {
      await app.close();
    }
  },
);

dbTest(
  "the project's key set out of reach is 503 auth_unavailable within its timeout; nothing changes",
  async () => {
    const es = await generateKeyPair("ES256", { extractable: true });
    const jwk = { ...await exportJWK(es.publicKey), kid: "k1", alg: "ES256", use: "sig" };
    const other = { ...jwk, kid: "k2" };
    // A server that accepts connections and never answers.
    const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held: Deno.Conn[] = [];
    (async () => {
      for await (const c of silent) held.push(c);
    })().catch(() => {});
    // A port where nothing listens.
    const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const closedPort = (closed.addr as Deno.NetAddr).port;
    closed.close();
    // A server whose key set answer is chosen per test.
    let answer: () => Response = () => new Response("", { status: 500 });
    const keys = Deno.serve(
      { port: 0, hostname: "127.0.0.1", onListen: () => {} },
      (req) =>
        new URL(req.url).pathname === "/auth/v1/.well-known/jwks.json"
          ? answer()
          : new Response("", { status: 404 }),
    );
    const keysUrl = `http://127.0.0.1:${keys.addr.port}`;
    const signed = (claims: Record<string, unknown>) =>
      new SignJWT(claims).setProtectedHeader({ alg: "ES256", kid: "k1", typ: "JWT" })
        .setIssuedAt().setExpirationTime("1h").sign(es.privateKey);
    const service = await signed({ role: "service_role" });
    const hsService = await token({ role: "service_role" });
    try {
      const cases: [string, string, () => Response, number, string][] = [
        [
          "never answers",
          `http://127.0.0.1:${(silent.addr as Deno.NetAddr).port}`,
          answer,
          503,
          "auth_unavailable",
        ],
        [
          "refuses the connection",
          `http://127.0.0.1:${closedPort}`,
          answer,
          503,
          "auth_unavailable",
        ],
        ["answers 500", keysUrl, () => new Response("", { status: 500 }), 503, "auth_unavailable"],
        ["answers something else", keysUrl, () => new Response("<html>"), 503, "auth_unavailable"],
        [
          "lacks the token's key",
          keysUrl,
          () => Response.json({ keys: [other] }),
          401,
          "invalid_token",
        ],
      ];
      for (const [what, url, respond, status, code] of cases) {
        answer = respond;
        await withEnv(
          {
            SUPABASE_URL: url,
            PITR_JWKS_TIMEOUT_MS: "300",
            SUPABASE_JWKS: undefined,
            SUPABASE_JWT_SECRET: TEST_SECRET,
          },
          async () => {
            const app = serve(authConfigFromEnv());
            try {
              const snapshots = await snapshotsOf("601");
              const started = Date.now();
              const r = await app.call("POST", "pitr-snapshot", service, { tenant_id: "601" });
              const took = Date.now() - started;
              assert.equal(r.status, status, `${what}: ${JSON.stringify(r.body)}`);
              assert.equal(r.body.error.code, code, what);
              assert.ok(took < 3000, `${what}: answered after ${took} ms`);
              if (what === "never answers") {
                assert.ok(took >= 300, `answered after ${took} ms, before the timeout`);
                assert.match(r.body.error.message, /300 ms/);
              }
              assert.equal(await snapshotsOf("601"), snapshots, what);
              // An HS256 token needs no key set: it still works while the key set is out of reach.
              const hs = await app.call("GET", "pitr-snapshot?tenant_id=601", hsService);
              assert.equal(hs.status, 200, what);
            } finally {
              await app.close();
            }
          },
        );
      }
      // The same path with the key set there: the token is accepted, the snapshot taken.
      answer = () => Response.json({ keys: [jwk] });
      await withEnv(
        { SUPABASE_URL: keysUrl, PITR_JWKS_TIMEOUT_MS: "300", SUPABASE_JWKS: undefined },
        async () => {
          const app = serve(authConfigFromEnv());
          try {
            const snapshots = await snapshotsOf("601");
            const admin = await signed({
              role: "authenticated",
              aud: "authenticated",
              iss: `${keysUrl}/auth/v1`,
              app_metadata: { tenant_id: "601", pitr_role: "admin" },
            });
            for (const bearer of [service, admin]) {
              const r = await app.call("POST", "pitr-snapshot", bearer, { tenant_id: "601" });
              assert.equal(r.status, 201, JSON.stringify(r.body));
            }
            assert.equal(await snapshotsOf("601"), snapshots + 2);
          } finally {
            await app.close();
          }
        },
      );
    } finally {
      silent.close();
      for (const c of held) c.close();
      await keys.shutdown();
    }
  },
);

cleanup(db);
