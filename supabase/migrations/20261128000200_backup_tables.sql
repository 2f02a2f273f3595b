-- The service's own tables: the registry of protected tables, snapshots, restore history,
-- drills and the foreign-key graph cache. Tenant data itself is stored in schema pitr_store.

create table public.backup_protected_tables (
  table_schema text not null default 'public',
  table_name text not null,
  tenant_column text not null default 'tenant_id',
  enabled boolean not null default true,
  created_at timestamptz not null default now(),
  primary key (table_schema, table_name)
);
comment on table public.backup_protected_tables is
  'Which tables hold tenant data. Without a row, every public table with a tenant_id column is protected.';

-- Orders snapshots: a stored row version belongs to the snapshots whose seq falls in its range.
create sequence public.backup_snapshot_seq;

create table public.backup_snapshots (
  id uuid primary key default gen_random_uuid(),
  seq bigint not null default nextval('public.backup_snapshot_seq') unique,
  tenant_id text not null,
  label text,
  kind text not null default 'manual' check (kind in ('manual', 'undo', 'point_in_time')),
  total_rows bigint not null default 0,
  created_at timestamptz not null default clock_timestamp(),
  created_by text
);
create index backup_snapshots_tenant_created on public.backup_snapshots (tenant_id, created_at desc);

-- One store per table and column signature: pitr_store.<store_table> holds typed row versions
-- of every tenant's snapshots of that table (see pitr.store_rows). A schema change starts a new one.
create table public.backup_stores (
  id bigint generated always as identity primary key,
  table_schema text not null,
  table_name text not null,
  columns jsonb not null,
  store_table text not null unique,
  -- Rows of these column types are hashed by their text (see pitr.hash_by_text).
  hash_by_text boolean not null,
  created_at timestamptz not null default clock_timestamp(),
  unique (table_schema, table_name, columns)
);

-- Per store and tenant, the versions still open (the tenant's latest snapshot of the table):
-- their count and hash sum, so a new snapshot's checksum follows from what it changed.
create table public.backup_store_heads (
  store_id bigint not null references public.backup_stores (id) on delete cascade,
  tenant_id text not null,
  row_count bigint not null,
  hash_sum numeric not null,
  primary key (store_id, tenant_id)
);

-- One row per table in a snapshot; its rows are the versions of store_table that it covers.
create table public.backup_snapshot_tables (
  id bigint generated always as identity primary key,
  snapshot_id uuid not null references public.backup_snapshots (id) on delete cascade,
  tenant_id text not null,
  position int not null,
  table_schema text not null,
  table_name text not null,
  tenant_column text not null,
  store_id bigint references public.backup_stores (id),
  store_table text,
  seq bigint not null,
  columns jsonb not null,
  primary_key text[] not null,
  row_count bigint not null default 0,
  checksum text,
  unique (snapshot_id, table_schema, table_name)
);

create table public.backup_pitr_rollback_history (
  id uuid primary key default gen_random_uuid(),
  tenant_id text not null,
  snapshot_id uuid not null references public.backup_snapshots (id),
  strategy text not null default 'overwrite' check (strategy in ('overwrite', 'merge')),
  requested_tables text[],
  status text not null default 'pending'
    check (status in ('pending', 'running', 'completed', 'failed', 'cancelled')),
  current_step text,
  restoration_steps jsonb not null default '[]',
  tables_restored text[] not null default '{}',
  fk_constraints_handled jsonb not null default '[]',
  transaction_ids text[] not null default '{}',
  rows_total bigint,
  rows_done bigint not null default 0,
  progress_pct numeric(5, 2) not null default 0,
  undo_snapshot_id uuid,
  error_code text,
  error_message text,
  error_table text,
  idempotency_key text,
  request_hash text,
  initiated_by text,
  created_at timestamptz not null default clock_timestamp(),
  started_at timestamptz,
  completed_at timestamptz,
  heartbeat_at timestamptz,
  -- The restore's own database session, so that a cancel can interrupt its statement.
  backend_pid integer,
  cancel_requested_at timestamptz
);
-- One restore per tenant at a time, decided by the database: a second insert fails with 23505.
create unique index backup_pitr_one_active_restore
  on public.backup_pitr_rollback_history (tenant_id) where status in ('pending', 'running');
create unique index backup_pitr_idempotency
  on public.backup_pitr_rollback_history (tenant_id, idempotency_key)
  where idempotency_key is not null;
create index backup_pitr_history_snapshot on public.backup_pitr_rollback_history (snapshot_id);

create table public.backup_pitr_drills (
  id uuid primary key default gen_random_uuid(),
  tenant_id text not null,
  snapshot_id uuid references public.backup_snapshots (id) on delete set null,
  ok boolean not null,
  duration_ms integer not null,
  rows bigint not null default 0,
  message text not null,
  created_at timestamptz not null default clock_timestamp()
);
create index backup_pitr_drills_tenant on public.backup_pitr_drills (tenant_id, created_at desc);

create table public.backup_fk_constraints_cache (
  constraint_oid oid primary key,
  constraint_name text not null,
  child_schema text not null,
  child_table text not null,
  child_columns text[] not null,
  parent_schema text not null,
  parent_table text not null,
  parent_columns text[] not null,
  is_deferrable boolean not null,
  initially_deferred boolean not null,
  on_delete text not null,
  on_update text not null,
  refreshed_at timestamptz not null default clock_timestamp()
);

-- Row level security: the service writes as service_role (BYPASSRLS); an authenticated user of
-- the admin frontend reads only their own tenant's rows, and nobody else reads or writes.
alter table public.backup_protected_tables enable row level security;
alter table public.backup_snapshots enable row level security;
alter table public.backup_snapshot_tables enable row level security;
alter table public.backup_stores enable row level security;
alter table public.backup_store_heads enable row level security;
alter table public.backup_pitr_rollback_history enable row level security;
alter table public.backup_pitr_drills enable row level security;
alter table public.backup_fk_constraints_cache enable row level security;

-- The registry and the FK graph describe the schema, not any tenant's data.
create policy "authenticated reads the registry" on public.backup_protected_tables
  for select to authenticated using (true);
create policy "authenticated reads the fk graph" on public.backup_fk_constraints_cache
  for select to authenticated using (true);
-- Tenant-scoped tables: only the tenant named in the caller's JWT (evaluated once per query).
create policy "tenant reads own snapshots" on public.backup_snapshots
  for select to authenticated
  using (tenant_id = (select auth.jwt() -> 'app_metadata' ->> 'tenant_id'));
create policy "tenant reads own snapshot tables" on public.backup_snapshot_tables
  for select to authenticated
  using (tenant_id = (select auth.jwt() -> 'app_metadata' ->> 'tenant_id'));
create policy "tenant reads own restores" on public.backup_pitr_rollback_history
  for select to authenticated
  using (tenant_id = (select auth.jwt() -> 'app_metadata' ->> 'tenant_id'));
create policy "tenant reads own drills" on public.backup_pitr_drills
  for select to authenticated
  using (tenant_id = (select auth.jwt() -> 'app_metadata' ->> 'tenant_id'));

grant select on public.backup_protected_tables, public.backup_snapshots,
  public.backup_snapshot_tables, public.backup_pitr_rollback_history, public.backup_pitr_drills,
  public.backup_fk_constraints_cache to authenticated;
revoke insert, update, delete, truncate on public.backup_protected_tables, public.backup_snapshots,
  public.backup_snapshot_tables, public.backup_pitr_rollback_history, public.backup_pitr_drills,
  public.backup_fk_constraints_cache from anon, authenticated;
revoke all on public.backup_protected_tables, public.backup_snapshots,
  public.backup_snapshot_tables, public.backup_pitr_rollback_history, public.backup_pitr_drills,
  public.backup_fk_constraints_cache from anon;
-- The stores' bookkeeping has no policy: only the service reads it.
revoke all on public.backup_stores, public.backup_store_heads from anon, authenticated;
grant all on public.backup_stores, public.backup_store_heads to service_role;
grant all on public.backup_protected_tables, public.backup_snapshots,
  public.backup_snapshot_tables, public.backup_pitr_rollback_history, public.backup_pitr_drills,
  public.backup_fk_constraints_cache to service_role;
