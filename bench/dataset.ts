// The benchmark's multi-tenant dataset: three tables with jsonb, timestamptz, uuid and bigint keys
// and foreign keys, built and drifted with set-based SQL. It must never touch another database
// than the fresh one the benchmark created.
import type { Sql } from "../shared/db/client.ts";

export interface Sizes {
  users: number;
  campaigns: number;
  enrollments: number;
}

/** Parents first: the order to load and COPY FROM; children first to delete. */
export const TABLES = ["users", "campaigns", "enrollments"] as const;

/** Bigint keys are tenant * ID_SPAN + n, so every tenant's keys are distinct and predictable. */
const ID_SPAN = 1_000_000_000;
/** Rows added by a drift are numbered from here, far above any loaded row. */
const DRIFT_BASE = 500_000_000;

export const rowsOf = (s: Sizes) => s.users + s.campaigns + s.enrollments;

export function scaled(s: Sizes, factor: number): Sizes {
  return {
    users: s.users * factor,
    campaigns: s.campaigns * factor,
    enrollments: s.enrollments * factor,
  };
}

/**
 * Only the first 98% of users and campaigns are referenced, so the last 2% are leaves a drift can
 * delete without breaking a foreign key (like new users who have not enrolled yet).
 */
const referenced = (n: number) => Math.max(1, n - Math.ceil(n / 50));

export async function createSchema(sql: Sql): Promise<void> {
  await sql`create table public.users (
    id uuid primary key,
    tenant_id bigint not null,
    member_no integer not null,
    email text not null,
    display_name text,
    profile jsonb not null,
    created_at timestamptz not null,
    updated_at timestamptz not null)`;
  await sql`create index users_tenant_id on public.users (tenant_id)`;
  await sql`create table public.campaigns (
    id bigint primary key,
    tenant_id bigint not null,
    owner_id uuid not null references public.users (id),
    title text not null,
    settings jsonb not null,
    starts_at timestamptz,
    created_at timestamptz not null)`;
  await sql`create index campaigns_tenant_id on public.campaigns (tenant_id)`;
  // Foreign-key columns indexed, as production schemas do (Supabase's linter flags them otherwise):
  // without them every deleted parent row costs a scan of the child table.
  await sql`create index campaigns_owner_id on public.campaigns (owner_id)`;
  await sql`create table public.enrollments (
    id bigint primary key,
    tenant_id bigint not null,
    campaign_id bigint not null references public.campaigns (id),
    user_id uuid not null references public.users (id),
    status text not null,
    progress jsonb not null,
    enrolled_at timestamptz not null,
    updated_at timestamptz not null)`;
  await sql`create index enrollments_tenant_id on public.enrollments (tenant_id)`;
  await sql`create index enrollments_campaign_id on public.enrollments (campaign_id)`;
  await sql`create index enrollments_user_id on public.enrollments (user_id)`;
}

/** Loads one tenant in one transaction; the rows are consistent by construction. */
export async function loadTenant(sql: Sql, tenant: number, s: Sizes): Promise<void> {
  const uRef = referenced(s.users);
  const cRef = referenced(s.campaigns);
  await sql.begin(async (tx) => {
    // Foreign keys hold by construction; skipping their per-row checks makes loading 2M rows
    // take seconds instead of minutes. (Superuser only, like the COPY baselines.)
    await tx`set local session_replication_role = replica`;
    await tx`insert into public.users
      select md5('u:' || ${tenant}::bigint || ':' || g)::uuid, ${tenant}::bigint, g,
        'user' || g || '@tenant' || ${tenant}::bigint || '.example',
        'User ' || g,
        jsonb_build_object('plan', (array['free', 'pro', 'team'])[1 + g % 3],
          'prefs', jsonb_build_object('theme', case when g % 2 = 0 then 'dark' else 'light' end,
            'locale', 'en-US', 'digest', g % 7 = 0),
          'score', g % 1000, 'tags', jsonb_build_array('t' || g % 10, 't' || g % 13)),
        timestamptz '2025-01-01 00:00:00+00' + g * interval '1 minute',
        timestamptz '2025-06-01 00:00:00+00' + g * interval '1 second'
      from generate_series(0, ${s.users - 1}::int) g`;
    await tx`insert into public.campaigns
      select ${tenant}::bigint * ${ID_SPAN}::bigint + g, ${tenant}::bigint,
        md5('u:' || ${tenant}::bigint || ':' || (g % ${uRef}::int))::uuid,
        'Campaign ' || g,
        jsonb_build_object('channel', (array['email', 'sms', 'push'])[1 + g % 3],
          'budget', (g % 100) * 10.5, 'steps', jsonb_build_array(1, 2, 3)),
        timestamptz '2025-02-01 00:00:00+00' + g * interval '1 hour',
        timestamptz '2025-01-15 00:00:00+00' + g * interval '1 minute'
      from generate_series(0, ${s.campaigns - 1}::int) g`;
    await tx`insert into public.enrollments
      select ${tenant}::bigint * ${ID_SPAN}::bigint + g, ${tenant}::bigint,
        ${tenant}::bigint * ${ID_SPAN}::bigint + (g % ${cRef}::int),
        md5('u:' || ${tenant}::bigint || ':' || ((g::bigint * 7919) % ${uRef}::int))::uuid,
        (array['invited', 'active', 'completed', 'dropped'])[1 + g % 4],
        jsonb_build_object('step', g % 10, 'score', g % 97, 'answers',
          jsonb_build_array(g % 5, g % 3)),
        timestamptz '2025-03-01 00:00:00+00' + g * interval '1 second',
        timestamptz '2025-07-01 00:00:00+00' + g * interval '1 second'
      from generate_series(0, ${s.enrollments - 1}::int) g`;
  });
}

/** Deletes every row of a tenant, children first, with the foreign keys checked as usual. */
export async function deleteTenant(sql: Sql, tenant: number): Promise<void> {
  await sql.begin(async (tx) => {
    for (const t of [...TABLES].reverse()) {
      await tx`delete from ${tx("public." + t)} where tenant_id = ${tenant}`;
    }
  });
}

/** VACUUM ANALYZE of the dataset's tables, so each repetition starts without dead rows. */
export async function vacuum(sql: Sql): Promise<void> {
  for (const t of TABLES) await sql`vacuum analyze ${sql("public." + t)}`;
}

/**
 * A drift of one tenant of `pct` percent of its rows (5 by default), spread over every table:
 * 0.6·pct% of each table's rows updated, 0.2·pct% deleted (leaves only, so foreign keys hold),
 * 0.2·pct% inserted. Returns the rows touched.
 */
export async function applyDrift(
  sql: Sql,
  tenant: number,
  s: Sizes,
  pct = 5,
): Promise<number> {
  const uRef = referenced(s.users);
  const cRef = referenced(s.campaigns);
  // Rows deleted and inserted per table (0.2·pct%), and the updated share in basis points,
  // picked by a multiplicative spread of the row number so that small shares stay spread out.
  const cent = (n: number) => Math.max(1, Math.round((n * pct) / 500));
  const bp = Math.round(60 * pct);
  const base = tenant * ID_SPAN;
  let touched = 0;
  await sql.begin(async (tx) => {
    const counts = [
      // users
      await tx`update public.users
        set profile = profile || '{"drifted": true}', updated_at = updated_at + interval '1 day'
        where tenant_id = ${tenant} and (member_no::bigint * 7919) % 10000 < ${bp}::int`,
      await tx`delete from public.users
        where tenant_id = ${tenant} and member_no >= ${s.users - cent(s.users)}::int
          and member_no >= ${uRef}::int`,
      await tx`insert into public.users
        select md5('u-new:' || ${tenant}::bigint || ':' || g)::uuid, ${tenant}::bigint,
          ${DRIFT_BASE}::int + g, 'new' || g || '@tenant' || ${tenant}::bigint || '.example',
          'New user ' || g, '{"plan": "free"}', now(), now()
        from generate_series(0, ${cent(s.users) - 1}::int) g`,
      // campaigns
      await tx`update public.campaigns
        set title = title || ' (edited)', settings = settings || '{"paused": true}'
        where tenant_id = ${tenant} and ((id - ${base}::bigint) * 7919) % 10000 < ${bp}::int`,
      await tx`delete from public.campaigns
        where tenant_id = ${tenant}
          and id - ${base}::bigint >= ${s.campaigns - cent(s.campaigns)}::int
          and id - ${base}::bigint >= ${cRef}::int`,
      await tx`insert into public.campaigns
        select ${base}::bigint + ${DRIFT_BASE}::bigint + g, ${tenant}::bigint,
          md5('u:' || ${tenant}::bigint || ':' || (g % ${uRef}::int))::uuid,
          'New campaign ' || g, '{"channel": "email"}', now(), now()
        from generate_series(0, ${cent(s.campaigns) - 1}::int) g`,
      // enrollments
      await tx`update public.enrollments
        set status = 'completed', progress = progress || '{"step": 10}', updated_at = now()
        where tenant_id = ${tenant} and ((id - ${base}::bigint) * 7919) % 10000 < ${bp}::int`,
      await tx`delete from public.enrollments
        where tenant_id = ${tenant}
          and ((id - ${base}::bigint) * 7919) % 10000 between 5000 and 4999 + ${
        Math.round(bp / 3)
      }::int`,
      await tx`insert into public.enrollments
        select ${base}::bigint + ${DRIFT_BASE}::bigint + g, ${tenant}::bigint,
          ${base}::bigint + (g % ${cRef}::int),
          md5('u:' || ${tenant}::bigint || ':' || (g % ${uRef}::int))::uuid,
          'invited', '{"step": 0}', now(), now()
        from generate_series(0, ${cent(s.enrollments) - 1}::int) g`,
    ];
    touched = counts.reduce((n, r) => n + r.count, 0);
  });
  return touched;
}

/** pg_total_relation_size of the source tables over every row in them. */
export async function sourceBytesPerRow(sql: Sql): Promise<{ bytes: number; rows: number }> {
  let bytes = 0;
  let rows = 0;
  for (const t of TABLES) {
    const [r] = await sql<{ bytes: string; rows: string }[]>`
      select pg_total_relation_size(${"public." + t}::regclass) as bytes,
        (select count(*) from ${sql("public." + t)}) as rows`;
    bytes += Number(r.bytes);
    rows += Number(r.rows);
  }
  return { bytes, rows };
}
