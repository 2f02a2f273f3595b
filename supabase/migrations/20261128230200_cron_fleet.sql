-- Schedules the fleet's nightly drills and the change log's maintenance with pg_cron, apart from
-- each other. Where pg_cron (and, for the drills, pg_net and Vault) is absent it does nothing, so
-- the same migrations apply everywhere; there, `deno task maintain` runs the maintenance.
--
-- Drills: one call drills for at most pitr.settings.drill_budget (100 s), so one nightly call
-- cannot cover a fleet. The job calls pitr-drill every 2 minutes from 01:00 to 04:58 UTC: 120
-- calls a night, 120 x 100 s = 12,000 s of drilling, which covers every tenant each night while
-- the fleet's drills take on average under 12,000 s / tenants (6 s a tenant for 2,000 tenants);
-- a larger fleet is covered over several nights, least recently drilled first (README: Drills).
-- A call never overlaps the next: 100 s of budget and at most one drill over it fit in 120 s, and
-- a call that finds another still running is answered 409 drills_running and does nothing.
-- pg_net's timeout (300 s) and the Edge wall clock (150 s) stay above the budget.
--
-- Maintenance: `call pitr.maintain_change_log()` daily at 13:41 UTC, far from the drill window (its
-- steps give up within lock_timeout on a locked log anyway, 20261128230000_log_maintenance.sql).
-- The job's command is the CALL alone: pg_cron runs a lone CALL outside a transaction block, so
-- the procedure may commit after each step (with another statement in the command it could not).
-- To see results:
--   select * from pitr.log_maintenance_status;
--   select * from pitr.drill_report order by report_rank, last_drill_at nulls first;
--   select * from cron.job_run_details order by start_time desc;
do $$
begin
  if not exists (select from pg_extension where extname = 'pg_cron') then
    raise notice 'pitr: pg_cron is absent; run `deno task maintain` daily, and drills by hand';
    return;
  end if;
  -- cron.schedule replaces a job of the same name, so re-applying this is harmless.
  perform cron.schedule('pitr-log-maintenance', '41 13 * * *', 'call pitr.maintain_change_log()');
  if (select count(*) from pg_extension where extname = 'pg_net') < 1
     or not exists (select from pg_namespace where nspname = 'vault') then
    raise notice 'pitr: pg_net or vault is absent; the drills are not scheduled';
    return;
  end if;
  -- The single nightly call of 20261128000400_cron_drill.sql gives way to the window.
  perform cron.unschedule(jobid) from cron.job where jobname = 'pitr-drill-nightly';
  perform cron.schedule(
    'pitr-drill-fleet',
    '*/2 1-4 * * *', -- every 2 minutes, 01:00-04:58 UTC: 120 calls of up to 100 s
    $job$
    select net.http_post(
      url := s.url || '/functions/v1/pitr-drill',
      headers := jsonb_build_object(
        'Content-Type', 'application/json',
        'Authorization', 'Bearer ' || s.key
      ),
      body := '{}'::jsonb, -- the least recently drilled tenants, for pitr.settings.drill_budget
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
