-- Schedules retention (pitr.apply_retention) with pg_cron where it exists: every 5 minutes from
-- 05:00 to 06:55 UTC, one bounded batch a call, so a night drops up to 24 batches
-- (settings.retention_batch each) and no call holds a tenant's lock for long. The window is apart
-- from the fleet drills (01:00 to 04:58, 20261128230200_cron_fleet.sql), which take the same
-- tenant locks, and from log maintenance (13:41).
-- Where pg_cron is absent (a plain PostgreSQL, CI), nothing is scheduled: run
-- `deno task retention` from any scheduler instead. Named apart from the change log's job
-- ('pitr-log-maintenance'), since a same-named job would replace it.
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
  perform cron.schedule('pitr-snapshot-retention', '*/5 5-6 * * *', 'select pitr.apply_retention()');
end
$$;
