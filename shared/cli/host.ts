// Where `deno task serve` and `deno task start` listen: 127.0.0.1 unless HOST says otherwise. It
// must never let them listen beyond this machine while tokens are verified with the public
// development secret, with which anyone can mint a service-role token and restore any tenant.

/** The Supabase CLI's local JWT secret, so tokens of `supabase start` work here too. Public. */
export const DEV_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

export const DEFAULT_HOST = "127.0.0.1";

/** 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach. */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  if (h === "localhost" || h === "::1" || h === "0:0:0:0:0:0:0:1") return true;
  const v4 = h.replace(/^::ffff:/, "");
  const parts = v4.split(".");
  return parts.length === 4 && parts[0] === "127" &&
    parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255);
}

/**
 * The address to listen on: `host` (the HOST variable) or 127.0.0.1. Throws when it reaches
 * beyond this machine while the JWT secret is the public development one.
 */
export function listenHost(host: string | undefined, jwtSecret: string | undefined): string {
  const chosen = host?.trim() || DEFAULT_HOST;
  if (jwtSecret === DEV_JWT_SECRET && !isLoopback(chosen)) {
    throw new Error(
      `HOST=${chosen} would let other machines call this server, whose tokens are signed with ` +
        "the public development secret (anyone could mint a service-role token): set " +
        "SUPABASE_JWT_SECRET to a secret of your own, or leave HOST unset to listen on 127.0.0.1",
    );
  }
  return chosen;
}

/** The address as it goes in a URL: an IPv6 address in brackets. */
export function urlHost(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}
