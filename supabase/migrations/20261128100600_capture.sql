-- Change capture for true point-in-time restores: the log's partitions and retention, the
-- per-table capture triggers, and the state of a table at a moment built from the log.

-- The daily partitions from p_from for p_days days. Creating a partition locks the log briefly,
-- so the job makes them ahead of the day they are for.
create function pitr.ensure_change_partitions(p_from date default current_date,
  p_days integer default 3) returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_day date;
  v_made integer := 0;
begin
  for v_day in select d::date from generate_series(p_from, p_from + p_days - 1, interval '1 day') d
  loop
    continue when to_regclass(format('pitr.%I', 'changes_' || to_char(v_day, 'YYYYMMDD')))
      is not null;
    begin
      execute format('create table pitr.%I partition of pitr.changes
          for values from (%L) to (%L)',
        'changes_' || to_char(v_day, 'YYYYMMDD'),
        (v_day::timestamp at time zone 'UTC'), ((v_day + 1)::timestamp at time zone 'UTC'));
      perform pitr.make_private(format('pitr.%I', 'changes_' || to_char(v_day, 'YYYYMMDD'))::regclass);
      v_made := v_made + 1;
    exception when others then
      -- Rows of that day already sit in the default partition: leave them there.
      raise warning 'pitr: no partition for %: %', v_day, sqlerrm;
    end;
  end loop;
  return v_made;
end
$$;

-- Drops the days older than the retention, and records from when the log is complete.
create function pitr.drop_expired_changes() returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_cutoff timestamptz := clock_timestamp() - (select retention from pitr.settings);
  v_part record;
  v_dropped integer := 0;
begin
  for v_part in
    select c.relname, to_date(right(c.relname, 8), 'YYYYMMDD') as day
    from pg_inherits i join pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'pitr.changes'::regclass and c.relname ~ '^changes_\d{8}$'
  loop
    if ((v_part.day + 1)::timestamp at time zone 'UTC') <= v_cutoff then
      execute format('drop table pitr.%I', v_part.relname);
      update pitr.settings
      set complete_since = greatest(complete_since, (v_part.day + 1)::timestamp at time zone 'UTC');
      v_dropped := v_dropped + 1;
    end if;
  end loop;
  delete from pitr.changes_default where changed_at < v_cutoff;
  if found then
    update pitr.settings set complete_since = greatest(complete_since, v_cutoff);
  end if;
  perform pitr.ensure_change_partitions();
  return v_dropped;
end
$$;

-- The capture trigger function of one table, generated when capture is turned on: static SQL
-- (planned once per session, unlike EXECUTE of text built on every statement) that appends the
-- key and old image of each changed row. security definer: the application's roles write the
-- log without being granted it.
create function pitr.capture_function_sql(p_relid oid, p_tenant_column text, p_pk text[])
returns text
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_rel text := p_relid::regclass::text;  -- schema-qualified and quoted as needed
  v_pk text := (select string_agg(format('%L, r.%I', c, c), ', ') from unnest(p_pk) c);
  v_key text := (select string_agg(format('r.%I', c), ', ') from unnest(p_pk) c);
  v_okey text := (select string_agg(format('o.%I', c), ', ') from unnest(p_pk) c);
  v_cols text := 'insert into pitr.changes (tenant_id, relid, op, pk, old_row) ';
  v_body text;
begin
  v_body := format($b$
begin
  if tg_op = 'INSERT' then
    %1$s select r.%2$I::text, %3$s, 'I', jsonb_build_object(%4$s), null from pitr_new_rows r;
  elsif tg_op = 'UPDATE' then
    %1$s select r.%2$I::text, %3$s, 'U', jsonb_build_object(%4$s), to_jsonb(r) from pitr_old_rows r;
    -- A key changed by the update did not exist before it: record it as inserted.
    %1$s select r.%2$I::text, %3$s, 'I', jsonb_build_object(%4$s), null from pitr_new_rows r
    where (%5$s) not in (select %6$s from pitr_old_rows o);
  elsif tg_op = 'DELETE' then
    %1$s select r.%2$I::text, %3$s, 'D', jsonb_build_object(%4$s), to_jsonb(r) from pitr_old_rows r;
  elsif tg_op = 'TRUNCATE' then
    -- Recorded, not refused: every row is logged as deleted before it goes.
    %1$s select r.%2$I::text, %3$s, 'D', jsonb_build_object(%4$s), to_jsonb(r) from %7$s r;
  end if;
  return null;
end
$b$, v_cols, p_tenant_column, p_relid, v_pk, v_key, v_okey, v_rel);
  if position('$pitr_capture$' in v_body) > 0 then
    raise exception 'a name of % cannot be used in a capture trigger', v_rel using errcode = 'PT422';
  end if;
  return format('create or replace function pitr.%I() returns trigger language plpgsql
      security definer set search_path = pg_catalog, pg_temp as $pitr_capture$%s$pitr_capture$',
    'capture_' || p_relid, v_body);
end
$$;

-- A table named as in the service's answers: 'schema.table' as written, 'table' for public.
create function pitr.relid_by_name(p_table text) returns oid
language sql stable set search_path = pg_catalog, pg_temp as $$
  select coalesce(
    (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = case when p_table like '%.%' then split_part(p_table, '.', 1) else 'public' end
       and c.relname = case when p_table like '%.%' then substr(p_table, strpos(p_table, '.') + 1)
         else p_table end),
    0::oid)
$$;

create function pitr.capture_enable(p_table text) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_relid oid := pitr.relid_by_name(p_table);
  v_t record;
  v_pk text[];
  v_args text;
begin
  select * into v_t from pitr.protected_tables where relid = v_relid;
  if not found then
    raise exception '% is not a protected table', p_table using errcode = 'PT404';
  end if;
  v_pk := pitr.primary_key_of(v_relid);
  if v_pk is null then
    raise exception 'table %.% has no primary key', v_t.table_schema, v_t.table_name
      using errcode = 'PT422';
  end if;
  if exists (select from pitr.capture_tables where relid = v_relid) then
    return;
  end if;
  perform pitr.ensure_change_partitions();
  execute pitr.capture_function_sql(v_relid, v_t.tenant_column, v_pk);
  v_args := format('pitr.%I', 'capture_' || v_relid);
  -- Triggers call it whatever the grants; nobody else may.
  execute format('revoke execute on function %s() from public, anon, authenticated, service_role',
    v_args);
  execute format('create trigger pitr_capture_insert after insert on %I.%I
      referencing new table as pitr_new_rows for each statement execute function %s()',
    v_t.table_schema, v_t.table_name, v_args);
  execute format('create trigger pitr_capture_update after update on %I.%I
      referencing old table as pitr_old_rows new table as pitr_new_rows
      for each statement execute function %s()',
    v_t.table_schema, v_t.table_name, v_args);
  execute format('create trigger pitr_capture_delete after delete on %I.%I
      referencing old table as pitr_old_rows for each statement execute function %s()',
    v_t.table_schema, v_t.table_name, v_args);
  execute format('create trigger pitr_capture_truncate before truncate on %I.%I
      for each statement execute function %s()',
    v_t.table_schema, v_t.table_name, v_args);
  execute format('alter table %I.%I enable always trigger pitr_capture_insert,
      enable always trigger pitr_capture_update, enable always trigger pitr_capture_delete,
      enable always trigger pitr_capture_truncate', v_t.table_schema, v_t.table_name);
  insert into pitr.capture_tables (relid, table_schema, table_name, tenant_column, primary_key)
  values (v_relid, v_t.table_schema, v_t.table_name, v_t.tenant_column, v_pk);
end
$$;

create function pitr.capture_disable(p_table text) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_c pitr.capture_tables;
begin
  select * into v_c from pitr.capture_tables where relid = pitr.relid_by_name(p_table);
  if not found then
    return;
  end if;
  execute format('drop trigger if exists pitr_capture_insert on %1$I.%2$I;
    drop trigger if exists pitr_capture_update on %1$I.%2$I;
    drop trigger if exists pitr_capture_delete on %1$I.%2$I;
    drop trigger if exists pitr_capture_truncate on %1$I.%2$I', v_c.table_schema, v_c.table_name);
  execute format('drop function if exists pitr.%I()', 'capture_' || v_c.relid);
  delete from pitr.capture_tables where relid = v_c.relid;
  -- Its log rows no longer describe a complete history.
  delete from pitr.changes where relid = v_c.relid;
end
$$;
-- Run as the database owner (SQL editor, psql, a migration); no API role may turn capture on.
revoke execute on function pitr.capture_enable(text), pitr.capture_disable(text)
  from public, anon, authenticated, service_role;

-- The tenant's rows of one table as they were at p_at, built from the rows now and the log of
-- what changed since: a key changed after p_at takes the old image of its first change after
-- p_at (none if that change was its insert); any other key is as it is now. Stored like any
-- snapshot (pitr.snapshot_table_from), so plan, execute and verify treat it as one.
create function pitr.snapshot_table_at(p_snapshot uuid, p_position integer, p_relid oid,
  p_at timestamptz, p_store_tenant text default null)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_table record;
  v_pred text;
  v_select text;
begin
  select * into v_table from pitr.protected_tables where relid = p_relid;
  if not exists (select from pitr.capture_tables c
      where c.relid = p_relid and c.enabled_at <= p_at) then
    raise exception 'table %.% has no change log back to %', v_table.table_schema,
      v_table.table_name, p_at using errcode = 'PT422';
  end if;
  v_pred := pitr.tenant_predicate(p_relid, v_table.tenant_column,
    (select tenant_id from public.backup_snapshots where id = p_snapshot));
  v_select := (select string_agg(format('l.%I', c.name), ', ') from pitr.live_columns(p_relid) c
    where not c.is_generated);
  return pitr.snapshot_table_from(p_snapshot, p_position, p_relid, format(
    '(with changed as materialized (
       select distinct on (c.pk) c.pk, c.op, c.old_row
       from pitr.changes c
       where c.relid = %1$s and c.changed_at > %2$L
       order by c.pk, c.seq)
     select %3$s from %4$I.%5$I l
     where %6$s and not exists (select from changed ch where ch.pk = jsonb_build_object(%7$s))
     union all
     select %3$s from changed ch
       cross join lateral jsonb_populate_record(null::%4$I.%5$I, ch.old_row) l
     where ch.op <> ''I'' and %6$s)',
    p_relid, p_at, v_select, v_table.table_schema, v_table.table_name, v_pred,
    (select string_agg(format('%L, l.%I', k, k), ', ') from unnest(pitr.primary_key_of(p_relid)) k)),
    p_store_tenant);
end
$$;

-- The capture functions of tables captured before the log moved wrote to public.pitr_changes:
-- each is generated again, in place, so its triggers keep firing without a gap.
do $$
declare
  v pitr.capture_tables;
begin
  for v in select * from pitr.capture_tables loop
    execute pitr.capture_function_sql(v.relid, v.tenant_column, v.primary_key);
    execute format('revoke execute on function pitr.%I() from public, anon, authenticated, service_role',
      'capture_' || v.relid);
  end loop;
end
$$;
