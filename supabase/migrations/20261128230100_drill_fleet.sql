-- Drills that cover the fleet: each call drills the tenants least recently drilled well (a failed
-- drill does not count, so the tenant comes first again) until a time budget is spent, and a
-- report says per tenant when it was last drilled, how long the restore took (the measured
-- restore time objective) and how it ended, failures first.

-- The time one call may spend drilling, well inside the Edge Function's wall clock (150 s on the
-- free plan, 400 s paid) and pg_net's 300 s timeout. A request may ask for less, or up to 140 s.
alter table pitr.settings
  add column drill_budget interval not null default interval '100 seconds'
    check (drill_budget > interval '0' and drill_budget <= interval '140 seconds');

-- One fleet call at a time: two overlapping calls would pick the same tenants, and the second
-- would find them busy and record false failures. A lease rather than a lock, so that no session
-- is held for the call; it expires by itself if the call dies.
create table pitr.drill_fleet_lease (
  id boolean primary key default true check (id),
  holder uuid,
  expires_at timestamptz not null default '-infinity'
);
insert into pitr.drill_fleet_lease default values;
select pitr.make_private('pitr.drill_fleet_lease');

-- A tenant's last good drill, found by index (the report looks it up per tenant).
create index backup_pitr_drills_tenant_ok on public.backup_pitr_drills (tenant_id, created_at desc)
  where ok;

-- Per tenant of the fleet (every tenant with a manual snapshot, and every tenant ever drilled):
-- its latest manual snapshot, its last drill, its last good drill and the failures since it.
-- status: failed (the last drill failed), never (not drilled yet), ok. report_rank orders the
-- report: failures first, then never drilled, then the longest since drilled.
create view pitr.drill_report as
with fleet as (
  select distinct tenant_id from public.backup_snapshots where kind = 'manual'
  union
  select distinct tenant_id from public.backup_pitr_drills
)
select f.tenant_id,
  case when l.ok is null then 'never' when l.ok then 'ok' else 'failed' end as status,
  case when l.ok is null then 1 when l.ok then 2 else 0 end as report_rank,
  l.created_at as last_drill_at, l.ok as last_ok, l.duration_ms as last_duration_ms,
  l.rows as last_rows, l.message as last_message, l.snapshot_id as last_snapshot_id,
  g.created_at as last_ok_at, g.duration_ms as rto_ms,
  (select count(*) from public.backup_pitr_drills d
   where d.tenant_id = f.tenant_id and not d.ok
     and d.created_at > coalesce(g.created_at, '-infinity')) as failures_since_ok,
  s.id as snapshot_id, s.total_rows as snapshot_rows
from fleet f
left join lateral (
  select d.* from public.backup_pitr_drills d where d.tenant_id = f.tenant_id
  order by d.created_at desc limit 1) l on true
left join lateral (
  select d.created_at, d.duration_ms from public.backup_pitr_drills d
  where d.tenant_id = f.tenant_id and d.ok order by d.created_at desc limit 1) g on true
left join lateral (
  select b.id, b.total_rows from public.backup_snapshots b
  where b.tenant_id = f.tenant_id and b.kind = 'manual' order by b.created_at desc limit 1) s on true;
select pitr.make_private('pitr.drill_report');

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
