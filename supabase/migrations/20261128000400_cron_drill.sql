-- Schedules the nightly restore drill: pg_cron calls the pitr-drill Edge Function through pg_net,
-- the way Supabase schedules Edge Functions, with the project URL and service key read from Vault
-- at each run (never stored in the job's text). Where pg_cron, pg_net or Vault is absent (a plain
-- PostgreSQL, CI) it does nothing, so the same migrations apply everywhere.
--
-- Before the job can call anything, store the two secrets once (Dashboard > Vault, or SQL):
--   select vault.create_secret('https://<ref>.supabase.co', 'project_url');
--   select vault.create_secret('<service_role key (a JWT)>', 'service_role_key');
-- Without them the job runs and posts nothing. To see results:
--   select * from public.backup_pitr_drills order by created_at desc;
--   select * from cron.job_run_details order by start_time desc;   -- the job itself
--   select * from net._http_response order by created desc;        -- the function's answers
do $$
begin
  if (select count(*) from pg_extension where extname in ('pg_cron', 'pg_net')) < 2
     or not exists (select from pg_namespace where nspname = 'vault') then
    raise notice 'pitr: pg_cron, pg_net or vault is absent; the drill is not scheduled';
    return;
  end if;
  -- cron.schedule replaces a job of the same name, so re-applying this is harmless.
  perform cron.schedule(
    'pitr-drill-nightly',
    '17 3 * * *', -- 03:17 UTC daily, off the hour when other jobs pile up
    $job$
    select net.http_post(
      url := s.url || '/functions/v1/pitr-drill',
      headers := jsonb_build_object(
        'Content-Type', 'application/json',
        'Authorization', 'Bearer ' || s.key
      ),
      body := '{}'::jsonb, -- every tenant with a snapshot
      timeout_milliseconds := 300000
    )
    from (
      select
        (select decrypted_secret from vault.decrypted_secrets where name = 'project_url') as url,
        (select decrypted_secret from vault.decrypted_secrets where name = 'service_role_key') as key
    ) s
    where s.url is not null and s.key is not null
    $job$
  );
end
$$;
