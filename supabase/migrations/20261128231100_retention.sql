-- Retention of snapshots (issue 12): a policy in pitr.settings and pitr.apply_retention(), which
-- drops the snapshots it expires through pitr.drop_snapshot, a bounded batch per call. It must
-- never drop a tenant's newest snapshot, its newest one that passed a drill, a snapshot a
-- restore names, nor touch a tenant whose lock another session holds.
--
-- The policy, by a snapshot's age (now - created_at):
--   manual snapshots: every one younger than retain_all; then, until retain_daily, the newest of
--     each UTC day; then, until retain_weekly, the newest of each ISO week (UTC); none older.
--     The newest of a week is the newest of its day, so a snapshot kept weekly was kept daily
--     before: what a run keeps never depends on when the previous run happened.
--   undo and point-in-time snapshots (restores leave them): until retain_undo.
--   always kept: the tenant's newest manual snapshot, its newest manual snapshot whose latest
--     drill passed (the last one proven to restore), and any snapshot a restore record names
--     (its source, kept with the record by its foreign key; the undo of a restore still pending
--     or running).
-- Dropping a snapshot deletes the row versions no other snapshot of its tenant covers, so the
-- store shrinks with the snapshots (the space is reused once (auto)vacuum has seen it).
alter table pitr.settings
  add column retain_all interval not null default '7 days',
  add column retain_daily interval not null default '30 days',
  add column retain_weekly interval not null default '13 weeks',
  add column retain_undo interval not null default '7 days',
  add column retention_batch integer not null default 500,
  add column retention_ran_at timestamptz,
  add constraint retention_tiers_in_order
    check (retain_all <= retain_daily and retain_daily <= retain_weekly),
  add constraint retention_batch_positive check (retention_batch > 0);

-- The snapshots the policy expires now, oldest first, with the rule that expires each. Read-only:
-- `deno task retention --dry-run` lists it.
create or replace function pitr.expired_snapshots()
returns table (id uuid, tenant_id text, kind text, created_at timestamptz, reason text)
language sql stable set search_path = pg_catalog, pg_temp set timezone = 'UTC' set lc_monetary = 'C'
as $$
  with p as (select * from pitr.settings),
  ranked as (
    select s.id, s.tenant_id, s.kind, s.created_at, s.seq,
      clock_timestamp() - s.created_at as age,
      row_number() over (partition by s.tenant_id, date_trunc('day', s.created_at)
        order by s.created_at desc, s.seq desc) as day_rank,
      row_number() over (partition by s.tenant_id, date_trunc('week', s.created_at)
        order by s.created_at desc, s.seq desc) as week_rank
    from public.backup_snapshots s where s.kind = 'manual'
  ),
  newest as (
    select distinct on (s.tenant_id) s.id from public.backup_snapshots s
    where s.kind = 'manual' order by s.tenant_id, s.created_at desc, s.seq desc
  ),
  newest_good as (
    select distinct on (s.tenant_id) s.id from public.backup_snapshots s
    join lateral (select d.ok from public.backup_pitr_drills d where d.snapshot_id = s.id
      order by d.created_at desc limit 1) d on true
    where s.kind = 'manual' and d.ok order by s.tenant_id, s.created_at desc, s.seq desc
  ),
  candidates as (
    select r.id, r.tenant_id, r.kind, r.created_at,
      case when r.age >= p.retain_weekly then 'older than retain_weekly'
        when r.age >= p.retain_daily then 'not the newest of its week'
        else 'not the newest of its day' end as reason
    from ranked r, p
    where r.age >= p.retain_all
      and not (r.age < p.retain_daily and r.day_rank = 1)
      and not (r.age < p.retain_weekly and r.week_rank = 1)
    union all
    select s.id, s.tenant_id, s.kind, s.created_at, 'older than retain_undo'
    from public.backup_snapshots s, p
    where s.kind in ('undo', 'point_in_time') and clock_timestamp() - s.created_at >= p.retain_undo
  )
  select c.id, c.tenant_id, c.kind, c.created_at, c.reason from candidates c
  where c.id not in (select n.id from newest n)
    and c.id not in (select g.id from newest_good g)
    and not exists (select from public.backup_pitr_rollback_history h where h.snapshot_id = c.id)
    and not exists (select from public.backup_pitr_rollback_history h
      where h.undo_snapshot_id = c.id and h.status in ('pending', 'running'))
  order by c.created_at, c.id
$$;

-- Drops up to p_max (default: settings.retention_batch) expired snapshots, oldest first, and
-- returns how many. Each tenant is taken with its lock, without waiting: a tenant being
-- snapshotted, restored or drilled is left for the next run. Everything a call drops commits
-- together, so a batch bounds how long a tenant's lock and rows are held; call it again until
-- it returns 0 (`deno task retention` does; pg_cron calls it every few minutes in its window).
create or replace function pitr.apply_retention(p_max integer default null) returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_max integer := coalesce(p_max, (select retention_batch from pitr.settings));
  v record;
  v_busy text[] := '{}';
  v_dropped integer := 0;
begin
  for v in select * from pitr.expired_snapshots() loop
    exit when v_dropped >= v_max;
    continue when v.tenant_id = any (v_busy);
    if not pg_try_advisory_xact_lock(hashtext('pitr:tenant'), hashtext(v.tenant_id)) then
      v_busy := v_busy || v.tenant_id;
      continue;
    end if;
    -- Under the tenant's lock, and with the snapshot's row locked against a restore record that
    -- would name it (its foreign key takes a share lock on the row): still there, still unnamed.
    perform from public.backup_snapshots s where s.id = v.id for update skip locked;
    continue when not found;
    continue when exists (select from public.backup_pitr_rollback_history h
      where h.snapshot_id = v.id or (h.undo_snapshot_id = v.id and h.status in ('pending', 'running')));
    perform pitr.drop_snapshot(v.id);
    v_dropped := v_dropped + 1;
  end loop;
  update pitr.settings set retention_ran_at = clock_timestamp();
  return v_dropped;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
