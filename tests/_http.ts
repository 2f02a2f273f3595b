// The HTTP test harness shared by the files that drive the app over a real socket: tokens signed
// with a test secret, and the app served on a free port with its background restores collected.
import { SignJWT } from "jose";
import type { Sql } from "../shared/db/client.ts";
import { createApp } from "../shared/http/app.ts";

export const TEST_SECRET = "test-secret-for-pitr-http-tests-0123456789";

export function token(claims: Record<string, unknown>, expiresIn = "2h"): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setIssuedAt()
    .setExpirationTime(expiresIn).sign(new TextEncoder().encode(TEST_SECRET));
}

/** A token of the admin frontend's user: a tenant and, optionally, a pitr_role. */
export function userToken(tenant: string, pitr_role?: string): Promise<string> {
  return token({
    role: "authenticated",
    aud: "authenticated",
    sub: `u-${tenant}-${pitr_role}`,
    app_metadata: { tenant_id: tenant, ...(pitr_role ? { pitr_role } : {}) },
  });
}

/**
 * Serves the app on a free port; `background` holds the restores that 202 answers started, `log`
 * the server's request log lines (kept, not printed).
 */
export function serveTestApp(sql: Sql, options: { swallowBackground?: boolean } = {}) {
  const background: Promise<unknown>[] = [];
  const log: string[] = [];
  const app = createApp({
    sql,
    auth: { jwtSecret: TEST_SECRET },
    runInBackground: (work) =>
      background.push(options.swallowBackground ? work.catch(() => {}) : work),
    log: (line) => log.push(line),
  });
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, app.fetch);
  return { server, background, log, origin: `http://127.0.0.1:${server.addr.port}` };
}
