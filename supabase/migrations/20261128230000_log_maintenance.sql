-- Maintenance of the change log (pitr.changes, one partition per UTC day) that never makes the
-- application's writes wait more than a bounded moment: every step that locks the log gives up
-- after a short lock_timeout and is retried with backoff, in a transaction of its own.
--
-- Why each step locks what it does (PostgreSQL 15, measured with pg_locks):
-- - CREATE TABLE ... PARTITION OF takes ACCESS EXCLUSIVE on the parent: it queues behind every
--   open restore or drill that wrote or read the log, and every captured write queues behind it.
--   A day is therefore made as a plain table and then attached: ATTACH PARTITION takes SHARE UPDATE
--   EXCLUSIVE on the parent, which no insert conflicts with, plus ACCESS EXCLUSIVE on the new table
--   and on the default partition, which inserts routed to a day partition never touch.
-- - DETACH PARTITION CONCURRENTLY would take only SHARE UPDATE EXCLUSIVE, but PostgreSQL refuses it
--   while the table has a default partition, and the default partition is what keeps a write
--   without its day's partition from failing. So an expired day is detached with a plain DETACH
--   (ACCESS EXCLUSIVE on the parent, held for a catalog update only) under lock_timeout: while an
--   open transaction holds any lock on the log, the detach gives up within lock_timeout and is
--   retried later, so a writer waits at most lock_timeout behind it, never for the open
--   transaction. The detached table is renamed changes_detached_<day> and dropped in a next step,
--   when it no longer belongs to the log and its drop locks nothing a writer uses.
-- - Rows that landed in the default partition (a day without its partition) move into that day's
--   partition when it is made, under ACCESS EXCLUSIVE on the default partition only.
-- A procedure runs the steps, committing after each, so no lock outlives its step; pg_cron and
-- `deno task maintain` both run `call pitr.maintain_change_log()`.

alter table pitr.settings
  -- How many days after today the job keeps a partition made for (weeks, so a missed run or two
  -- never sends writes to the default partition).
  add column log_days_ahead integer not null default 28
    check (log_days_ahead between 1 and 366),
  -- How long one maintenance step waits for a lock on the log before giving up (and so the
  -- longest a captured write can queue behind it).
  add column maintenance_lock_timeout interval not null default interval '100 milliseconds'
    check (maintenance_lock_timeout > interval '0' and maintenance_lock_timeout <= interval '10 s'),
  -- How many times a step that gave up on a lock is tried again in one run, with backoff.
  add column maintenance_attempts integer not null default 12
    check (maintenance_attempts between 1 and 100);

-- One row per run of the job: when, how it ended, and what it did.
create table pitr.log_maintenance_runs (
  id bigint generated always as identity primary key,
  started_at timestamptz not null default clock_timestamp(),
  finished_at timestamptz,
  -- running; ok: every step done; partial: a step gave up (the log stayed locked, or an error)
  -- and is left for the next run.
  outcome text not null default 'running' check (outcome in ('running', 'ok', 'partial')),
  made integer not null default 0,
  detached integer not null default 0,
  dropped integer not null default 0,
  moved_rows bigint not null default 0,
  deleted_rows bigint not null default 0,
  -- Steps that gave up on a lock within lock_timeout (each retried until attempts run out).
  lock_timeouts integer not null default 0,
  message text
);
select pitr.make_private('pitr.log_maintenance_runs');

-- The UTC day a log partition is for, from its name (changes_YYYYMMDD); null for any other table.
create function pitr.change_partition_day(p_name text) returns date
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select case when p_name ~ '^changes_\d{8}$' then to_date(right(p_name, 8), 'YYYYMMDD') end
$$;

-- Step: the partition of one day, made as a table, filled with the rows of that day the default
-- partition holds, then attached. Returns the rows moved, or null when the day had its partition.
create function pitr.attach_change_partition(p_day date) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp set lock_timeout = '100ms' as $$
declare
  v_name text := 'changes_' || to_char(p_day, 'YYYYMMDD');
  v_from timestamptz := p_day::timestamp at time zone 'UTC';
  v_to timestamptz := (p_day + 1)::timestamp at time zone 'UTC';
  v_moved bigint := 0;
begin
  -- The setting, for this function only (its SET clause restores the caller's value on exit).
  perform set_config('lock_timeout',
    (select (extract(epoch from maintenance_lock_timeout) * 1000)::bigint::text || 'ms'
     from pitr.settings), true);
  if exists (select from pg_inherits i join pg_class c on c.oid = i.inhrelid
             where i.inhparent = 'pitr.changes'::regclass and c.relname = v_name
               and c.relnamespace = 'pitr'::regnamespace) then
    return null;
  end if;
  execute format('create table pitr.%I (like pitr.changes including constraints)', v_name);
  perform pitr.make_private(format('pitr.%I', v_name)::regclass);
  if exists (select from pitr.changes_default where changed_at >= v_from and changed_at < v_to) then
    -- Writers of this day wait for the move (they land in the default partition meanwhile).
    lock table pitr.changes_default in access exclusive mode;
    execute format('with m as (delete from pitr.changes_default
        where changed_at >= %L and changed_at < %L returning *)
      insert into pitr.%I select * from m', v_from, v_to, v_name);
    get diagnostics v_moved = row_count;
  end if;
  execute format('alter table pitr.changes attach partition pitr.%I for values from (%L) to (%L)',
    v_name, v_from, v_to);
  -- The partition's clone of the stamp trigger must fire in every session too.
  execute format('alter table pitr.%I enable always trigger changes_commit_stamp', v_name);
  return v_moved;
end
$$;

-- Step: an expired day leaves the log. What the log holds from then on starts after it, so the
-- point-in-time build refuses moments before (log_complete_after), in the same transaction.
create function pitr.detach_change_partition(p_name text) returns void
language plpgsql
set search_path = pg_catalog, pg_temp set lock_timeout = '100ms' as $$
declare
  v_day date := pitr.change_partition_day(p_name);
begin
  perform set_config('lock_timeout',
    (select (extract(epoch from maintenance_lock_timeout) * 1000)::bigint::text || 'ms'
     from pitr.settings), true);
  if v_day is null or not exists (select from pg_inherits i join pg_class c on c.oid = i.inhrelid
      where i.inhparent = 'pitr.changes'::regclass and c.relname = p_name
        and c.relnamespace = 'pitr'::regnamespace) then
    return;
  end if;
  execute format('alter table pitr.changes detach partition pitr.%I', p_name);
  execute format('alter table pitr.%I rename to %I', p_name,
    'changes_detached_' || to_char(v_day, 'YYYYMMDD'));
  perform pitr.log_complete_after((v_day + 1)::timestamp at time zone 'UTC');
end
$$;

-- Step: a detached day is dropped. It no longer belongs to the log: only its own lock is taken.
create function pitr.drop_detached_change(p_name text) returns void
language plpgsql
set search_path = pg_catalog, pg_temp set lock_timeout = '100ms' as $$
begin
  perform set_config('lock_timeout',
    (select (extract(epoch from maintenance_lock_timeout) * 1000)::bigint::text || 'ms'
     from pitr.settings), true);
  if p_name ~ '^changes_detached_\d{8}$' and to_regclass(format('pitr.%I', p_name)) is not null
     and not exists (select from pg_inherits where inhrelid = to_regclass(format('pitr.%I', p_name)))
  then
    execute format('drop table pitr.%I', p_name);
  end if;
end
$$;

-- Step: expired rows of the default partition, and commit stamps older than the complete log.
create function pitr.trim_change_default() returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp set lock_timeout = '100ms' as $$
declare
  v_cutoff timestamptz := clock_timestamp() - (select retention from pitr.settings);
  v_deleted bigint;
begin
  perform set_config('lock_timeout',
    (select (extract(epoch from maintenance_lock_timeout) * 1000)::bigint::text || 'ms'
     from pitr.settings), true);
  delete from pitr.changes_default where changed_at < v_cutoff;
  get diagnostics v_deleted = row_count;
  if v_deleted > 0 then
    perform pitr.log_complete_after(v_cutoff);
  end if;
  delete from pitr.commits where committed_at < (select complete_since from pitr.settings);
  return v_deleted;
end
$$;

-- The days the job makes partitions for: every day from today to log_days_ahead after it, and
-- any unexpired day whose rows sit in the default partition.
create function pitr.change_days_due() returns setof date
language sql stable set search_path = pg_catalog, pg_temp as $$
  select d from (
    select g::date as d
    from generate_series((now() at time zone 'UTC')::date,
      (now() at time zone 'UTC')::date + (select log_days_ahead from pitr.settings),
      interval '1 day') g
    union
    select distinct (changed_at at time zone 'UTC')::date from pitr.changes_default
    where changed_at >= clock_timestamp() - (select retention from pitr.settings)
  ) days
  where not exists (select from pg_inherits i join pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'pitr.changes'::regclass and c.relname = 'changes_' || to_char(d, 'YYYYMMDD'))
  order by d
$$;

-- The day partitions whose whole day is older than the retention.
create function pitr.change_partitions_expired() returns setof text
language sql stable set search_path = pg_catalog, pg_temp as $$
  select c.relname::text
  from pg_inherits i join pg_class c on c.oid = i.inhrelid
  where i.inhparent = 'pitr.changes'::regclass and pitr.change_partition_day(c.relname) is not null
    and (pitr.change_partition_day(c.relname) + 1)::timestamp at time zone 'UTC'
      <= clock_timestamp() - (select retention from pitr.settings)
  order by 1
$$;

-- The job. A procedure, so that it commits after each step: a step holds its locks for its own
-- short transaction only. A step that gives up on a lock (SQLSTATE 55P03, lock_not_available) is
-- retried after a backoff (lock_timeout doubled each time, capped at 5 s, with jitter) until
-- maintenance_attempts are spent; then it is left for the next run and the run is 'partial'.
-- No SET clause (a procedure with one cannot commit) and no exception handler around the whole
-- (a block with one cannot commit either): every name below is schema-qualified, and a run stopped
-- by something other than a step stays 'running' with no finished_at, which the status shows.
create procedure pitr.maintain_change_log()
language plpgsql as $$
declare
  v_run bigint;
  v_attempts integer;
  v_timeout interval;
  v_step record;
  v_try integer;
  v_done boolean;
  v_result bigint;
  v_made integer := 0;
  v_detached integer := 0;
  v_dropped integer := 0;
  v_moved bigint := 0;
  v_deleted bigint := 0;
  v_timeouts integer := 0;
  v_left text[] := '{}';
begin
  -- One run at a time (pg_cron and an operator's `deno task maintain` may meet): a session lock,
  -- held across the commits below, released at the end or when the session ends.
  if not pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext('pitr:log-maintenance')) then
    raise notice 'pitr: another run of the log maintenance is in progress';
    return;
  end if;
  insert into pitr.log_maintenance_runs default values returning id into v_run;
  select s.maintenance_attempts, s.maintenance_lock_timeout into v_attempts, v_timeout
  from pitr.settings s;
  commit;
  for v_step in
    select * from (
      select 1 as ord, 'attach' as kind, d::text as arg from pitr.change_days_due() d
      union all
      select 2, 'detach', n from pitr.change_partitions_expired() n
      union all
      -- Detached days: the ones left by an earlier run, then the ones detached just now.
      select 3, 'drop', c.relname::text from pg_catalog.pg_class c
      where c.relnamespace = 'pitr'::regnamespace and c.relname ~ '^changes_detached_\d{8}$'
      union all
      select 4, 'drop', 'changes_detached_' || pg_catalog.right(n, 8)
      from pitr.change_partitions_expired() n
      union all
      select 5, 'trim', null
    ) steps
    order by ord, arg
  loop
    v_try := 0;
    v_done := false;
    loop
      v_try := v_try + 1;
      begin
        case v_step.kind
          when 'attach' then
            v_result := pitr.attach_change_partition(v_step.arg::date);
            if v_result is not null then
              v_made := v_made + 1;
              v_moved := v_moved + v_result;
            end if;
          when 'detach' then
            perform pitr.detach_change_partition(v_step.arg);
            v_detached := v_detached + 1;
          when 'drop' then
            if pg_catalog.to_regclass(pg_catalog.format('pitr.%I', v_step.arg)) is not null then
              perform pitr.drop_detached_change(v_step.arg);
              v_dropped := v_dropped + 1;
            end if;
          else
            v_deleted := v_deleted + pitr.trim_change_default();
        end case;
        v_done := true;
      exception
        when lock_not_available then
          v_timeouts := v_timeouts + 1;
        when others then
          -- Not a lock: trying again will not help. Left for the next run, said in the message.
          v_left := v_left || pg_catalog.format('%s %s: %s', v_step.kind,
            coalesce(v_step.arg, ''), sqlerrm);
          v_done := true;
      end;
      update pitr.log_maintenance_runs
      set made = v_made, detached = v_detached, dropped = v_dropped, moved_rows = v_moved,
        deleted_rows = v_deleted, lock_timeouts = v_timeouts
      where id = v_run;
      commit;
      exit when v_done;
      if v_try >= v_attempts then
        v_left := v_left || pg_catalog.format('%s %s: the log stayed locked for %s attempts',
          v_step.kind, coalesce(v_step.arg, ''), v_try);
        exit;
      end if;
      perform pg_catalog.pg_sleep(least(5.0,
        pg_catalog.date_part('epoch', v_timeout) * (2 ^ (v_try - 1)) * (0.5 + pg_catalog.random())));
    end loop;
  end loop;
  update pitr.log_maintenance_runs
  set finished_at = pg_catalog.clock_timestamp(),
    outcome = case when pg_catalog.cardinality(v_left) = 0 then 'ok' else 'partial' end,
    message = case when pg_catalog.cardinality(v_left) = 0 then null
      else pg_catalog.array_to_string(v_left, '; ') end
  where id = v_run;
  -- The history stays short: the last 200 runs.
  delete from pitr.log_maintenance_runs where id <= v_run - 200;
  commit;
  perform pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('pitr:log-maintenance'));
end
$$;

-- What the job left: when it last ran and how, how far ahead the log has partitions without a
-- gap (-1: not even today's), its oldest and newest days, and what sits in the default partition.
create view pitr.log_maintenance_status as
with parts as (
  select pitr.change_partition_day(c.relname) as day
  from pg_inherits i join pg_class c on c.oid = i.inhrelid
  where i.inhparent = 'pitr.changes'::regclass and pitr.change_partition_day(c.relname) is not null
),
today as (select (now() at time zone 'UTC')::date as d),
last_run as (select * from pitr.log_maintenance_runs order by id desc limit 1)
select
  (select started_at from last_run) as last_started_at,
  (select finished_at from last_run) as last_finished_at,
  (select outcome from last_run) as last_outcome,
  (select message from last_run) as last_message,
  (select max(finished_at) from pitr.log_maintenance_runs where outcome = 'ok') as last_ok_at,
  (select min(g::date) from today, generate_series(today.d, today.d + 400, interval '1 day') g
   where g::date not in (select day from parts)) - (select d from today) - 1 as days_ahead,
  (select min(day) from parts) as oldest_partition_day,
  (select max(day) from parts) as newest_partition_day,
  (select count(*) from parts) as partitions,
  (select count(*) from pitr.changes_default) as default_rows,
  (select count(*) from pg_class c where c.relnamespace = 'pitr'::regnamespace
     and c.relname ~ '^changes_detached_\d{8}$') as detached_pending,
  s.complete_since, s.retention, s.log_days_ahead, s.maintenance_lock_timeout
from pitr.settings s;
select pitr.make_private('pitr.log_maintenance_status');

-- The former entry points, kept for their callers (capture_enable makes today's partitions; an
-- operator may still call them in a transaction): the same steps, each tried once under
-- lock_timeout, a step that gives up left for the job, with a warning.
create or replace function pitr.ensure_change_partitions(p_from date default current_date,
  p_days integer default 3) returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_day date;
  v_made integer := 0;
begin
  for v_day in select d::date from generate_series(p_from, p_from + p_days - 1, interval '1 day') d
  loop
    begin
      if pitr.attach_change_partition(v_day) is not null then
        v_made := v_made + 1;
      end if;
    exception when others then
      -- The day's rows go to the default partition meanwhile; the job moves them.
      raise warning 'pitr: no partition for % yet: %', v_day, sqlerrm;
    end;
  end loop;
  return v_made;
end
$$;

create or replace function pitr.drop_expired_changes() returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_name text;
  v_dropped integer := 0;
begin
  for v_name in select pitr.change_partitions_expired() loop
    begin
      perform pitr.detach_change_partition(v_name);
      perform pitr.drop_detached_change('changes_detached_' || right(v_name, 8));
      v_dropped := v_dropped + 1;
    exception when lock_not_available then
      raise warning 'pitr: % is in use; the maintenance job will detach it', v_name;
    end;
  end loop;
  perform pitr.trim_change_default();
  perform pitr.ensure_change_partitions((now() at time zone 'UTC')::date);
  return v_dropped;
end
$$;

-- Weeks of partitions from now on.
select pitr.ensure_change_partitions((now() at time zone 'UTC')::date,
  (select log_days_ahead + 1 from pitr.settings));

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
revoke execute on procedure pitr.maintain_change_log() from public, anon, authenticated,
  service_role;
