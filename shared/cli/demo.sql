-- A small demo application for `deno task start` on the embedded PostgreSQL: two tenants (101,
-- 102) of an awareness platform, so that the README's curl examples have data to act on. Loaded
-- only into the embedded database, and only when it has no protected table yet.
create table public.demo_tenants (
  id bigint primary key,
  name text not null
);
insert into pitr.backup_protected_tables (table_schema, table_name, tenant_column)
values ('public', 'demo_tenants', 'id');

create table public.demo_users (
  id uuid primary key default gen_random_uuid(),
  tenant_id bigint not null references public.demo_tenants (id),
  email text not null,
  display_name text,
  profile jsonb not null default '{}',
  updated_at timestamptz not null default now(),
  unique (tenant_id, email)
);

create table public.demo_campaigns (
  id bigint generated always as identity primary key,
  tenant_id bigint not null references public.demo_tenants (id),
  title text not null,
  starts_on date
);

create table public.demo_enrollments (
  tenant_id bigint not null,
  campaign_id bigint not null references public.demo_campaigns (id) on delete cascade,
  user_id uuid not null references public.demo_users (id) on delete cascade,
  score numeric(5, 2),
  primary key (campaign_id, user_id)
);
create index on public.demo_enrollments (user_id);

insert into public.demo_tenants values (101, 'Acme'), (102, 'Globex');
insert into public.demo_users (tenant_id, email, display_name, profile)
select t, format('user%s@tenant%s.example', i, t), format('User %s', i),
  jsonb_build_object('locale', case when i % 3 = 0 then 'ar' else 'en' end)
from (values (101), (102)) v(t), generate_series(1, 200) i;
insert into public.demo_campaigns (tenant_id, title, starts_on)
select t, format('Phishing drill %s', i), date '2026-01-01' + i * 7
from (values (101), (102)) v(t), generate_series(1, 10) i;
insert into public.demo_enrollments
select c.tenant_id, c.id, u.id, (abs(hashtext(u.email || c.id)) % 10000) / 100.0
from public.demo_campaigns c join public.demo_users u on u.tenant_id = c.tenant_id
where abs(hashtext(u.email || c.title)) % 4 = 0;
