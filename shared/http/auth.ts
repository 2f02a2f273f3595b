// Who is calling: verifies the bearer JWT (HS256 with the project's secret, or asymmetric keys from
// its JWKS; a user token's audience and issuer) and decides what the caller may do. It must never
// accept an unsigned, expired or unverifiable token, nor let a tenant's user act on another tenant.
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeProtectedHeader,
  errors as joseErrors,
  type JWTPayload,
  jwtVerify,
  type JWTVerifyGetKey,
} from "jose";
import { Forbidden, Unauthorized, Unavailable } from "./errors.ts";

export interface AuthConfig {
  /** SUPABASE_JWT_SECRET: verifies HS256 tokens (legacy keys, local development). */
  jwtSecret?: string;
  /** The key set for asymmetric tokens: `$SUPABASE_URL/auth/v1/.well-known/jwks.json`. */
  jwks?: JWTVerifyGetKey;
  /**
   * The project's own API secret keys (SUPABASE_SERVICE_ROLE_KEY, the values of
   * SUPABASE_SECRET_KEYS): a bearer equal to one of them is the service role. The new `sb_secret_`
   * keys are not JWTs, and a deployed function is not given the legacy JWT secret, so this is how
   * the cron drill's service key is accepted there.
   */
  serviceKeys?: string[];
  /**
   * The issuer a user token must carry: `$SUPABASE_URL/auth/v1`, as Supabase Auth signs them, or
   * PITR_AUTH_ISSUER where the function sees another URL than its users (a custom domain, the
   * CLI's internal http://kong:8000). Unset (no SUPABASE_URL, as under `deno task start`), a user
   * token's issuer is not checked.
   */
  issuer?: string;
}

/** The audience of a Supabase Auth user token; a token minted for anything else is refused. */
const USER_AUDIENCE = "authenticated";

const ASYMMETRIC = ["RS256", "ES256", "EdDSA", "PS256"];

export function jwksUrl(supabaseUrl: string): URL {
  return new URL("/auth/v1/.well-known/jwks.json", supabaseUrl);
}

/** What Supabase Auth puts in `iss`: the project's URL and /auth/v1. */
export function authIssuer(supabaseUrl: string): string {
  return new URL("/auth/v1", supabaseUrl).toString();
}

/**
 * The project's key set, fetched from its URL (and cached by jose). A key set that cannot be had
 * (no answer within timeoutMs, a network failure, an answer that is not a key set) is 503
 * `auth_unavailable`, not a 401 for a token that may be valid nor a 500: the caller can retry.
 * A key set without the token's key stays a 401.
 */
export function remoteJwks(url: URL, timeoutMs: number): JWTVerifyGetKey {
  const jwks = createRemoteJWKSet(url, { timeoutDuration: timeoutMs });
  return async (header, token) => {
    try {
      return await jwks(header, token);
    } catch (e) {
      if (
        e instanceof joseErrors.JWKSNoMatchingKey ||
        e instanceof joseErrors.JWKSMultipleMatchingKeys
      ) throw e;
      throw new Unavailable(
        "auth_unavailable",
        e instanceof joseErrors.JWKSTimeout
          ? `the project's signing keys did not arrive within ${timeoutMs} ms; try again`
          : "the project's signing keys could not be fetched; try again",
      );
    }
  };
}

/**
 * From the environment: SUPABASE_JWT_SECRET; the key set from SUPABASE_JWKS (given to deployed
 * functions) or else fetched from SUPABASE_URL (waiting up to PITR_JWKS_TIMEOUT_MS, default 5 s);
 * the issuer of user tokens (PITR_AUTH_ISSUER, else from SUPABASE_URL); the project's secret keys.
 */
export function authConfigFromEnv(): AuthConfig {
  const secret = Deno.env.get("SUPABASE_JWT_SECRET") || undefined;
  const url = Deno.env.get("SUPABASE_URL") || undefined;
  const localJwks = parseJson(Deno.env.get("SUPABASE_JWKS"));
  const jwks = localJwks && Array.isArray((localJwks as { keys?: unknown }).keys)
    ? createLocalJWKSet(localJwks as Parameters<typeof createLocalJWKSet>[0])
    : url
    ? remoteJwks(jwksUrl(url), Number(Deno.env.get("PITR_JWKS_TIMEOUT_MS") ?? 5000))
    : undefined;
  const serviceKeys = [
    Deno.env.get("SUPABASE_SERVICE_ROLE_KEY"),
    ...Object.values((parseJson(Deno.env.get("SUPABASE_SECRET_KEYS")) ?? {}) as object),
  ].filter((k): k is string => typeof k === "string" && k.length >= 20);
  const issuer = Deno.env.get("PITR_AUTH_ISSUER") || (url ? authIssuer(url) : undefined);
  return { jwtSecret: secret, jwks, serviceKeys, issuer };
}

function parseJson(text: string | undefined): unknown {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Compares in time independent of where the strings differ. */
function sameKey(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

export type Principal =
  | { role: "service_role"; sub?: string }
  | { role: "authenticated"; sub?: string; tenantId?: string; pitrRole?: string }
  | { role: string; sub?: string };

/** Returns the verified caller, or throws 401. */
export async function authenticate(
  config: AuthConfig,
  authorization: string | undefined,
): Promise<Principal> {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? "");
  if (!match) {
    throw new Unauthorized("missing_token", "an Authorization: Bearer <JWT> header is required");
  }
  const token = match[1];
  if (config.serviceKeys?.some((k) => sameKey(k, token))) return { role: "service_role" };
  let alg: string | undefined;
  try {
    alg = decodeProtectedHeader(token).alg;
  } catch {
    throw new Unauthorized("invalid_token", "the bearer token is not a JWT");
  }
  let payload: JWTPayload;
  try {
    if (alg === "HS256" && config.jwtSecret) {
      ({ payload } = await jwtVerify(token, new TextEncoder().encode(config.jwtSecret), {
        algorithms: ["HS256"],
      }));
    } else if (alg && ASYMMETRIC.includes(alg) && config.jwks) {
      ({ payload } = await jwtVerify(token, config.jwks, { algorithms: ASYMMETRIC }));
    } else {
      // alg "none", an algorithm we were given no key for, or no key at all.
      throw new Unauthorized(
        "invalid_token",
        `tokens signed with ${alg ?? "no algorithm"} are not accepted`,
      );
    }
  } catch (e) {
    if (e instanceof Unauthorized || e instanceof Unavailable) throw e;
    if (e instanceof joseErrors.JWTExpired) {
      throw new Unauthorized("token_expired", "the bearer token has expired");
    }
    if (e instanceof joseErrors.JOSEError) {
      throw new Unauthorized("invalid_token", "the bearer token could not be verified");
    }
    throw e;
  }
  if (typeof payload.exp !== "number") {
    throw new Unauthorized("invalid_token", "the bearer token has no expiry");
  }
  const role = typeof payload.role === "string" ? payload.role : "";
  const sub = typeof payload.sub === "string" ? payload.sub : undefined;
  if (role === "authenticated") {
    // A user token is one Supabase Auth issued for this project's users: the anon key, a token
    // of another audience or of another project's auth (same secret, another URL) is not one.
    const audience = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
    if (!audience.includes(USER_AUDIENCE)) {
      throw new Unauthorized("invalid_token", `a user token's aud must be ${USER_AUDIENCE}`);
    }
    if (config.issuer !== undefined && payload.iss !== config.issuer) {
      throw new Unauthorized("invalid_token", `a user token's iss must be ${config.issuer}`);
    }
    const meta = (payload.app_metadata ?? {}) as Record<string, unknown>;
    const tenant = meta.tenant_id;
    return {
      role,
      sub,
      tenantId: typeof tenant === "string" || typeof tenant === "number"
        ? String(tenant)
        : undefined,
      pitrRole: typeof meta.pitr_role === "string" ? meta.pitr_role : undefined,
    };
  }
  return { role, sub };
}

/** `read`: list, validate, plan, status (viewer or admin). `write`: snapshot, execute, drill (admin). */
export type Action = "read" | "write";

/** The role check, before any lookup: a viewer is refused execute whatever the snapshot. */
export function requireAction(p: Principal, action: Action): void {
  if (p.role === "service_role") return;
  if (p.role !== "authenticated") {
    throw new Forbidden("forbidden", `role ${p.role || "(none)"} may not use pitr`);
  }
  const pitrRole = (p as { pitrRole?: string }).pitrRole;
  if (pitrRole === "admin") return;
  if (pitrRole === "viewer" && action === "read") return;
  throw new Forbidden(
    "forbidden",
    pitrRole === "viewer"
      ? "a viewer may list, validate, plan and read status, not change anything"
      : "app_metadata.pitr_role must be admin or viewer",
  );
}

/** Whether the caller may act on a tenant (its role checked apart, by requireAction). */
export function mayActOn(p: Principal, tenantId: string): boolean {
  if (p.role === "service_role") return true;
  const own = (p as { tenantId?: string }).tenantId;
  return p.role === "authenticated" && own !== undefined && own === tenantId;
}

/** The tenant check, for a tenant the caller named (an id it named is checked by its lookup). */
export function requireTenant(p: Principal, tenantId: string): void {
  if (!mayActOn(p, tenantId)) {
    throw new Forbidden("forbidden_tenant", "this token may not act on that tenant");
  }
}

/** The tenant of an authenticated caller, for calls that default to it (a drill). */
export function ownTenant(p: Principal): string | undefined {
  return p.role === "authenticated" ? (p as { tenantId?: string }).tenantId : undefined;
}
