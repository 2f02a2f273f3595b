-- A restore's database session is its pid and the moment that backend started (pg_stat_activity's
-- backend_start): a pid alone may belong to another session by the time a cancel or a heartbeat
-- looks for it, and only the pair names one session for good.
alter table public.backup_pitr_rollback_history add column backend_start timestamptz;
comment on column public.backup_pitr_rollback_history.backend_start is
  'pg_stat_activity.backend_start of the restore''s session; with backend_pid it identifies it';
