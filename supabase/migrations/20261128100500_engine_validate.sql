-- Validation of a snapshot table against its checksum and the live schema, and the tenant
-- lock and abandoned-restore bookkeeping.

-- Is the snapshot table intact, and does it still fit the live table? One row per check.
-- severity 'error' makes the snapshot unrestorable; 'warning' is reported and allowed.
create function pitr.validate_table(p_snapshot_table bigint, p_checksum boolean default true)
returns table (check_name text, ok boolean, severity text, message text)
language plpgsql
set search_path = pg_catalog, pg_temp set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  v_st pitr.backup_snapshot_tables;
  v_relid oid;
  v_digest text;
  v_pk text[];
  v_col record;
  v_bad bigint;
  v_name text;
begin
  select * into v_st from pitr.backup_snapshot_tables where id = p_snapshot_table;
  v_name := format('%s.%s', v_st.table_schema, v_st.table_name);
  if to_regclass(format('pitr_store.%I', v_st.store_table)) is null then
    return query select 'checksum', false, 'error', format('the stored rows of %s are missing', v_name);
    return;
  end if;
  -- A restore skips this pass: it compares what it wrote with the recorded checksum instead.
  v_digest := case when p_checksum then pitr.digest(
      format('pitr_store.%I s where %s', v_st.store_table, pitr.members(v_st.store_tenant, v_st.seq)),
      array(select format('s.%I', c ->> 'name') from jsonb_array_elements(v_st.columns) c),
      (select hash_by_text from pitr.backup_stores where id = v_st.store_id))
    else v_st.checksum end;
  if v_digest is distinct from v_st.checksum then
    return query select 'checksum', false, 'error',
      format('the stored rows of %s do not match their checksum (%s rows recorded); the snapshot was altered',
        v_name, v_st.row_count);
  elsif p_checksum then
    return query select 'checksum', true, 'info', format('%s rows match the checksum', v_st.row_count);
  end if;

  v_relid := to_regclass(format('%I.%I', v_st.table_schema, v_st.table_name));
  if v_relid is null then
    return query select 'table_exists', false, 'error', format('table %s no longer exists', v_name);
    return;
  end if;
  return query select 'table_exists', true, 'info', format('table %s exists', v_name);

  if not exists (select from pitr.live_columns(v_relid) c where c.name = v_st.tenant_column) then
    return query select 'tenant_column', false, 'error',
      format('table %s has no column %s (its tenant column)', v_name, v_st.tenant_column);
  end if;

  v_pk := pitr.primary_key_of(v_relid);
  if v_pk is null then
    return query select 'primary_key', true, 'info',
      format('table %s has no primary key: its rows are restored as a multiset, matched by row image',
        v_name);
  elsif exists (select from unnest(v_pk) k where not exists (
      select from jsonb_array_elements(v_st.columns) c where c ->> 'name' = k)) then
    return query select 'primary_key', false, 'error',
      format('the primary key of %s (%s) has columns the snapshot lacks', v_name, array_to_string(v_pk, ', '));
  else
    return query select 'primary_key', true, 'info',
      format('primary key of %s: %s', v_name, array_to_string(v_pk, ', '));
  end if;

  -- Columns of the snapshot: dropped or retyped since.
  for v_col in
    select s.col ->> 'name' as name, s.col ->> 'type' as old_type, c.type as new_type,
      s.col ->> 'store' as store_type, c.is_generated
    from jsonb_array_elements(v_st.columns) s(col)
    left join pitr.live_columns(v_relid) c on c.name = s.col ->> 'name'
  loop
    if v_col.new_type is null or v_col.is_generated then
      execute format('select count(*) from pitr_store.%I s where %s and s.%I is not null',
        v_st.store_table, pitr.members(v_st.store_tenant, v_st.seq), v_col.name)
      into v_bad;
      return query select 'columns', v_bad = 0, case when v_bad = 0 then 'warning' else 'error' end,
        format('column %s.%s was dropped since the snapshot%s', v_name, v_col.name,
          case when v_bad = 0 then ' (it held only NULLs)'
            else format('; %s rows hold values that would be lost', v_bad) end);
    elsif v_col.new_type <> v_col.old_type or v_col.new_type <> v_col.store_type then
      begin
        -- A value survives the type it goes back to when it casts there and back to its stored
        -- type unchanged. A value of one of the application's types is stored as its text and is
        -- checked even when the type kept its name: a label renamed or dropped since, or a
        -- domain's new constraint, would refuse it.
        execute format('select count(*) from pitr_store.%I s where %s and s.%I::%s::%s is distinct from s.%I',
          v_st.store_table, pitr.members(v_st.store_tenant, v_st.seq), v_col.name, v_col.new_type,
          v_col.store_type, v_col.name)
        into v_bad;
        continue when v_bad = 0 and v_col.new_type = v_col.old_type;
        return query select 'columns', v_bad = 0, case when v_bad = 0 then 'warning' else 'error' end,
          case when v_col.new_type = v_col.old_type
            then format('column %s.%s (%s): %s snapshot values would change', v_name, v_col.name,
              v_col.new_type, v_bad)
            else format('column %s.%s changed type from %s to %s%s', v_name, v_col.name,
              v_col.old_type, v_col.new_type, case when v_bad = 0 then '; every value casts without loss'
                else format('; %s values would change', v_bad) end) end;
      exception when others then
        return query select 'columns', false, 'error',
          case when v_col.new_type = v_col.old_type
            then format('column %s.%s (%s) no longer accepts values of the snapshot: %s', v_name,
              v_col.name, v_col.new_type, sqlerrm)
            else format('column %s.%s changed type from %s to %s and its values cannot be cast: %s',
              v_name, v_col.name, v_col.old_type, v_col.new_type, sqlerrm) end;
      end;
    end if;
  end loop;

  -- Columns added since: fine when a re-inserted row can leave them out.
  for v_col in
    select c.name from pitr.live_columns(v_relid) c
    where not c.is_generated and c.not_null and not c.has_default
      and not exists (select from jsonb_array_elements(v_st.columns) s where s ->> 'name' = c.name)
  loop
    return query select 'columns', v_st.row_count = 0,
      case when v_st.row_count = 0 then 'warning' else 'error' end,
      format('column %s.%s was added since the snapshot as NOT NULL without a default; rows re-inserted from the snapshot would have no value for it',
        v_name, v_col.name);
  end loop;
end
$$;

-- The advisory lock a restore or drill holds on its tenant for its whole transaction.
create function pitr.tenant_lock_held(p_tenant text) returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
  select exists (
    select from pg_locks
    where locktype = 'advisory' and granted and objsubid = 2
      and classid = hashtext('pitr:tenant')::oid and objid = hashtext(p_tenant)::oid)
$$;

-- A restore whose process died (an Edge Function killed at its wall-clock limit, a server
-- killed) rolled back with its session, but its history row still says pending or running. Once
-- its heartbeat is older than p_stale and nobody holds its tenant's lock, record it as failed.
create function pitr.reap_abandoned(p_tenant text, p_stale interval) returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_count integer;
begin
  update public.backup_pitr_rollback_history h
  set status = 'failed', current_step = 'failed', error_code = 'abandoned',
    error_message = format('the process running this restore stopped (last heartbeat %s); '
      'its transaction was rolled back and nothing was changed',
      to_char(coalesce(h.heartbeat_at, h.created_at) at time zone 'UTC',
        'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
    undo_snapshot_id = null, tables_restored = '{}', completed_at = clock_timestamp()
  where h.status in ('pending', 'running')
    and (p_tenant is null or h.tenant_id = p_tenant)
    and coalesce(h.heartbeat_at, h.created_at) < clock_timestamp() - p_stale
    and not pitr.tenant_lock_held(h.tenant_id);
  get diagnostics v_count = row_count;
  return v_count;
end
$$;
