-- Private by construction: everything internal (registry, stores and their bookkeeping, FK
-- cache, settings, capture registry, the change log and its partitions) moves out of public into
-- schema pitr, which the Data API roles cannot even use. Only what the admin frontend reads stays
-- in public (snapshots, restore history, drills), with RLS and the narrowest grants. Supabase
-- grants every new object of public to anon and authenticated, so every grant here is revoked
-- first. Safe on a project with the old layout: tables move with their rows (SET SCHEMA keeps
-- oids, data, indexes and foreign keys), and the log's partitions move one by one.

-- The engine's functions, views and types are code, not data: dropped here and created again,
-- naming the new layout, by the migrations that follow (one per topic). The capture trigger
-- functions (pitr.capture_<relid>) are left: triggers on application tables depend on them, and
-- 20261128100600_capture.sql regenerates each one in place.
do $$
declare
  v record;
begin
  for v in
    select p.oid::regprocedure as f from pg_proc p
    where p.pronamespace = 'pitr'::regnamespace and p.proname !~ '^capture_\d+$'
  loop
    execute format('drop function %s cascade', v.f);
  end loop;
end
$$;
drop function if exists public.pitr_capture_enable(text);
drop function if exists public.pitr_capture_disable(text);
drop view if exists pitr.protected_tables;
drop view if exists pitr.fk_edges;
drop type if exists pitr.restore_sql;

-- The API roles get nothing in the private schemas: no USAGE, so no object there is reachable
-- through the Data API even if a later grant on an object slipped through.
revoke all on schema pitr, pitr_store from public, anon, authenticated, service_role;
alter default privileges in schema pitr revoke all on tables from public;
alter default privileges in schema pitr revoke all on sequences from public;
alter default privileges in schema pitr revoke execute on functions from public;
alter default privileges in schema pitr_store revoke all on tables from public;

do $$
declare
  v record;
begin
  -- Internal tables keep their names in pitr; the capture tables lose their pitr_ prefix.
  for v in select * from (values
      ('backup_protected_tables', 'backup_protected_tables'),
      ('backup_snapshot_tables', 'backup_snapshot_tables'),
      ('backup_stores', 'backup_stores'),
      ('backup_store_heads', 'backup_store_heads'),
      ('backup_fk_constraints_cache', 'backup_fk_constraints_cache'),
      ('pitr_settings', 'settings'),
      ('pitr_capture_tables', 'capture_tables'),
      ('pitr_changes', 'changes')) t(old_name, new_name)
  loop
    if to_regclass(format('public.%I', v.old_name)) is not null then
      execute format('alter table public.%I set schema pitr', v.old_name);
      if v.old_name <> v.new_name then
        execute format('alter table pitr.%I rename to %I', v.old_name, v.new_name);
      end if;
    end if;
  end loop;
  if to_regclass('public.backup_snapshot_seq') is not null then
    alter sequence public.backup_snapshot_seq set schema pitr;
  end if;
  -- The log's partitions are tables of their own: each moves, as changes_<day> / changes_default.
  for v in
    select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
    join pg_namespace n on n.oid = c.relnamespace
    where i.inhparent = 'pitr.changes'::regclass and n.nspname = 'public'
  loop
    execute format('alter table public.%I set schema pitr', v.relname);
    execute format('alter table pitr.%I rename to %I', v.relname,
      regexp_replace(v.relname, '^pitr_changes', 'changes'));
  end loop;
end
$$;

-- The versions of a snapshot table are found in its store under store_tenant: the tenant's id,
-- or for a point-in-time plan (built and rolled back), an id of its own, so that the plan never
-- touches, nor waits for, the tenant's own versions and heads.
alter table pitr.backup_snapshot_tables add column store_tenant text;
update pitr.backup_snapshot_tables set store_tenant = tenant_id;
alter table pitr.backup_snapshot_tables alter column store_tenant set not null;

-- The seq of the snapshot whose state a head holds (its open versions): a restore to exactly
-- that snapshot can take its undo snapshot from its own diff (see pitr.undo_from_diff). Unknown
-- (null) until the tenant's next snapshot of the table.
alter table pitr.backup_store_heads add column head_seq bigint;

-- Policies of the moved tables described what authenticated could read; nothing now.
drop policy if exists "authenticated reads the registry" on pitr.backup_protected_tables;
drop policy if exists "authenticated reads the fk graph" on pitr.backup_fk_constraints_cache;
drop policy if exists "tenant reads own snapshot tables" on pitr.backup_snapshot_tables;
drop policy if exists "authenticated reads the settings" on pitr.settings;
drop policy if exists "authenticated reads which tables are captured" on pitr.capture_tables;

-- Every object the project has, in every schema, loses every grant to the API roles; then the
-- three public tables get back exactly what the frontend needs.
do $$
declare
  v record;
begin
  for v in
    select c.oid::regclass as rel, c.relkind from pg_class c
    where c.relnamespace in ('pitr'::regnamespace, 'pitr_store'::regnamespace)
      and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
  loop
    execute format('revoke all on %s %s from public, anon, authenticated, service_role',
      case when v.relkind = 'S' then 'sequence' else 'table' end, v.rel);
  end loop;
end
$$;
revoke all on public.backup_snapshots, public.backup_pitr_rollback_history,
  public.backup_pitr_drills from public, anon, authenticated, service_role;
grant select on public.backup_snapshots, public.backup_pitr_rollback_history,
  public.backup_pitr_drills to authenticated, service_role;

-- Who reads through the Data API: a user of the tenant named in their JWT whose
-- app_metadata.pitr_role is viewer or admin (as the functions decide), and the service key.
-- Nobody writes: no INSERT/UPDATE/DELETE grant, and no write policy.
drop policy if exists "tenant reads own snapshots" on public.backup_snapshots;
drop policy if exists "tenant reads own restores" on public.backup_pitr_rollback_history;
drop policy if exists "tenant reads own drills" on public.backup_pitr_drills;

alter table public.backup_snapshots enable row level security;
alter table public.backup_pitr_rollback_history enable row level security;
alter table public.backup_pitr_drills enable row level security;
-- Not FORCEd: the service connects as the tables' owner, which on Supabase (postgres) has
-- BYPASSRLS anyway, and FORCE would only add a policy for the owner. No view or SECURITY DEFINER
-- function of this project reads these tables on behalf of an API role.
create policy "pitr viewers and admins read their tenant's snapshots" on public.backup_snapshots
  for select to authenticated
  using (tenant_id = (select auth.jwt() -> 'app_metadata' ->> 'tenant_id')
    and (select auth.jwt() -> 'app_metadata' ->> 'pitr_role') in ('viewer', 'admin'));
create policy "pitr viewers and admins read their tenant's restores"
  on public.backup_pitr_rollback_history
  for select to authenticated
  using (tenant_id = (select auth.jwt() -> 'app_metadata' ->> 'tenant_id')
    and (select auth.jwt() -> 'app_metadata' ->> 'pitr_role') in ('viewer', 'admin'));
create policy "pitr viewers and admins read their tenant's drills" on public.backup_pitr_drills
  for select to authenticated
  using (tenant_id = (select auth.jwt() -> 'app_metadata' ->> 'tenant_id')
    and (select auth.jwt() -> 'app_metadata' ->> 'pitr_role') in ('viewer', 'admin'));
-- service_role has BYPASSRLS: it reads every row it is granted without a policy.
