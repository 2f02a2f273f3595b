-- Schedules retention (pitr.apply_retention) with pg_cron where it exists: every 5 minutes from
-- 01:00 to 02:55 UTC, one bounded batch a call, so a night drops up to 24 batches
-- (settings.retention_batch each) and no call holds a tenant's lock for long. The window ends
-- before the nightly drill (03:17, 20261128000400_cron_drill.sql), away from the hour's mark.
-- Where pg_cron is absent (a plain PostgreSQL, CI), nothing is scheduled: run
-- `deno task retention` from any scheduler instead. Named apart from the change log's job (the
-- README's 'pitr-retention', pitr.drop_expired_changes), which a same-named job would replace.
-- To see the runs:
--   select * from cron.job_run_details where jobid = (select jobid from cron.job
--     where jobname = 'pitr-snapshot-retention') order by start_time desc;
do $$
begin
  if not exists (select from pg_namespace where nspname = 'cron')
     or not exists (select from pg_extension where extname = 'pg_cron') then
    raise notice 'pitr: pg_cron is absent; retention is not scheduled (run deno task retention)';
    return;
  end if;
  -- cron.schedule replaces a job of the same name, so re-applying this is harmless.
  perform cron.schedule('pitr-snapshot-retention', '*/5 1-2 * * *', 'select pitr.apply_retention()');
end
$$;
