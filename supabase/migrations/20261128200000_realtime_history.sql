-- Live progress for the admin frontend: Supabase Realtime streams the changes of the tables in
-- the publication `supabase_realtime`, so a restore's history row joins it and a browser follows
-- `progress_pct`, `current_step` and `status` with supabase-js
-- `channel().on('postgres_changes', ...)` instead of polling pitr-status. Realtime delivers a
-- change only to subscribers whose JWT may select the row under the table's RLS, so each tenant
-- sees its own restores. Where the publication is absent (a plain PostgreSQL, CI) this does
-- nothing; applied again, or to a publication FOR ALL TABLES, it changes nothing.
do $$
begin
  if not exists (select from pg_publication where pubname = 'supabase_realtime') then
    raise notice 'pitr: publication supabase_realtime is absent; restore progress is not streamed';
    return;
  end if;
  if not exists (
    select from pg_publication_tables
    where pubname = 'supabase_realtime'
      and schemaname = 'public' and tablename = 'backup_pitr_rollback_history'
  ) then
    alter publication supabase_realtime add table public.backup_pitr_rollback_history;
  end if;
end
$$;
