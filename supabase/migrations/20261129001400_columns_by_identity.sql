-- A snapshot's columns are matched with the live table's by identity (attnum), not only by name.
-- A column renamed since the snapshot (ALTER TABLE … RENAME COLUMN, an application's migration)
-- was taken for a column dropped and another added: when its snapshot values were all NULL the
-- restore went ahead and left the renamed column as it is now, a state that never existed (found
-- by tests/exactness.test.ts, seed 4242); holding values, the snapshot was refused; two columns
-- that swapped names were restored by name, swapping their values. Each snapshot table now
-- records the table's oid and its columns' attnums when it was written; a renamed column is
-- restored into the column it became.
-- A snapshot recorded before this change has no attnums: where one of its columns is missing and
-- the table has a column the snapshot lacks, the two cannot be told apart, and it is refused.

alter table pitr.backup_snapshot_tables
  add column relid oid,
  add column attnums smallint[];

comment on column pitr.backup_snapshot_tables.attnums is
  'attnum of each of columns (same order) in table relid when the snapshot table was written';

-- Every writer of a snapshot table (a snapshot, a point-in-time state, a restore's undo) stores
-- the live table's columns as they are named at that moment, in the same transaction that read
-- them, so the names resolve to the columns read. ENABLE ALWAYS: a restore writes its undo with
-- session_replication_role = replica, when ordinary triggers do not fire.
create function pitr.record_column_identity() returns trigger
language plpgsql set search_path = pg_catalog, pg_temp set jit = off as $$
begin
  new.relid := to_regclass(format('%I.%I', new.table_schema, new.table_name));
  new.attnums := array(
    select a.attnum
    from jsonb_array_elements(new.columns) with ordinality c(col, ord)
    left join pg_attribute a on a.attrelid = new.relid and a.attname = c.col ->> 'name'
      and a.attnum > 0 and not a.attisdropped
    order by c.ord);
  return new;
end
$$;

create trigger record_column_identity before insert on pitr.backup_snapshot_tables
  for each row execute function pitr.record_column_identity();
alter table pitr.backup_snapshot_tables enable always trigger record_column_identity;

-- Each column of a snapshot table with the live column its values go to: the column with the
-- attnum it had, when the table is the same one (its oid) and that column was not dropped since;
-- else the live column of its name, unless that one is another snapshot column's by attnum (a
-- column dropped and one of the same name added since, or a table dropped and created again,
-- pairs by name as before). `name` is null when no live column takes the values.
create function pitr.column_pairs(p_snapshot_table bigint)
returns table (ord bigint, stored text, stored_type text, store_type text, name text, type text,
  is_generated boolean, identity_always boolean, not_null boolean, renamed boolean)
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on set jit = off
as $$
  with st as (
    select x.*, to_regclass(format('%I.%I', x.table_schema, x.table_name)) as live_relid
    from pitr.backup_snapshot_tables x where x.id = p_snapshot_table),
  -- pitr.live_columns without the store type each column would have (a call per column).
  live as (
    select a.attnum, a.attname::text as name, format_type(a.atttypid, a.atttypmod) as type,
      a.attgenerated <> '' as is_generated, a.attidentity = 'a' as identity_always,
      a.attnotnull as not_null
    from st join pg_attribute a on a.attrelid = st.live_relid
    where a.attnum > 0 and not a.attisdropped),
  snap as (
    select s.ord, s.col, case when st.relid = st.live_relid then st.attnums[s.ord] end as attnum
    from st, jsonb_array_elements(st.columns) with ordinality s(col, ord)),
  by_id as (
    select s.ord, l.name from snap s join live l on l.attnum = s.attnum)
  select s.ord, s.col ->> 'name', s.col ->> 'type', s.col ->> 'store', l.name, l.type,
    l.is_generated, l.identity_always, l.not_null, coalesce(l.name <> s.col ->> 'name', false)
  from snap s
  left join live l on l.name = coalesce((select i.name from by_id i where i.ord = s.ord),
    (select n.name from live n where n.name = s.col ->> 'name'
       and not exists (select from by_id i where i.name = n.name)))
  order by s.ord
$$;

-- Whether the snapshot's columns can no longer be told from the table's: recorded without
-- attnums (before 20261129001400), a column of it is missing by name, and the table has a column
-- it lacks, which may be that one renamed.
create function pitr.columns_ambiguous(p_snapshot_table bigint) returns boolean
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on set jit = off
as $$
  select x.attnums is null
    and exists (select from pitr.column_pairs(p_snapshot_table) p where p.name is null)
    and exists (select from pitr.live_columns(to_regclass(format('%I.%I', x.table_schema,
        x.table_name))) c
      where not c.is_generated
        and c.name not in (select p.name from pitr.column_pairs(p_snapshot_table) p
          where p.name is not null))
  from pitr.backup_snapshot_tables x where x.id = p_snapshot_table
$$;

create or replace function pitr.restore_sql(p_snapshot_table bigint) returns pitr.restore_sql
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on set jit = off
as $$
declare
  v_st pitr.backup_snapshot_tables;
  r pitr.restore_sql;
  v_pk text[];
  v_cached text := current_setting('pitr.restore_sql_' || p_snapshot_table, true);
begin
  if v_cached <> '' then
    return v_cached::pitr.restore_sql;
  end if;
  select * into v_st from pitr.backup_snapshot_tables where id = p_snapshot_table;
  if not found then
    raise exception 'snapshot table % not found', p_snapshot_table using errcode = 'PT404';
  end if;
  r.relid := to_regclass(format('%I.%I', v_st.table_schema, v_st.table_name));
  if r.relid is null then
    raise exception 'table %.% no longer exists', v_st.table_schema, v_st.table_name
      using errcode = 'PT422';
  end if;
  if pitr.columns_ambiguous(p_snapshot_table) then
    raise exception 'a column of %.% in the snapshot is missing and the table has a column the snapshot lacks: a column renamed since cannot be told from one dropped in a snapshot this old',
      v_st.table_schema, v_st.table_name using errcode = 'PT422';
  end if;
  r.live := format('%I.%I', v_st.table_schema, v_st.table_name);
  r.store := format('pitr_store.%I', v_st.store_table);
  r.members := pitr.members(v_st.store_tenant, v_st.seq);
  r.by_text := (select hash_by_text from pitr.backup_stores where id = v_st.store_id);
  r.tenant_pred := pitr.tenant_predicate(r.relid, v_st.tenant_column, v_st.tenant_id);
  r.checksum := v_st.checksum;
  r.writes := format('pg_temp.%I', 'pitr_write_' || p_snapshot_table);
  r.deletes := format('pg_temp.%I', 'pitr_delete_' || p_snapshot_table);
  r.selection := format('pg_temp.%I', 'pitr_select_' || p_snapshot_table);
  v_pk := coalesce(pitr.primary_key_of(r.relid), '{}');

  -- p.store_type is the type the value is stored in, p.stored_type the live type it had; p.stored
  -- its column in the store, p.name the live column it goes to (another name if renamed since).
  select array_agg(format('%I', p.name) order by p.ord),
    array_agg(case when p.type = p.store_type then format('s.%I', p.stored)
      else format('s.%I::%s', p.stored, p.type) end order by p.ord),
    array_agg(case when p.type = p.store_type then format('l.%I', p.name)
      else format('l.%I::%s', p.name, p.store_type) end order by p.ord),
    coalesce(array_agg(format('%I', p.name) order by p.ord)
      filter (where not p.identity_always and p.name <> all (v_pk)), '{}'),
    -- In a unique index or exclusion constraint, GENERATED ALWAYS (an UPDATE cannot set it), or
    -- the key itself: a key equal but not identical (1.0 and 1.00) matches, yet must be rewritten.
    coalesce(array_agg(format('%I', p.name) order by p.ord)
      filter (where p.name = any (pitr.unique_columns(r.relid)) or p.identity_always
        or p.name = any (v_pk)), '{}'),
    coalesce(bool_or(p.identity_always), false),
    count(*) = jsonb_array_length(v_st.columns) and bool_and(p.type = p.stored_type)
  into r.cols, r.exprs, r.live_exprs, r.upd, r.reinsert, r.overriding, r.exact
  from pitr.column_pairs(p_snapshot_table) p
  where p.name is not null and not p.is_generated;

  if exists (select from unnest(v_pk) k where format('%I', k) <> all (coalesce(r.cols, '{}'))) then
    raise exception 'the primary key of %.% is not in the snapshot', v_st.table_schema,
      v_st.table_name using errcode = 'PT422';
  end if;
  r.pk := array(select format('%I', k) from unnest(v_pk) k);
  perform set_config('pitr.restore_sql_' || p_snapshot_table, r::text, true);
  return r;
end
$$;

-- The undo taken from the diff writes the live rows into the snapshot's own store, column for
-- column by name: only when the table's columns are the snapshot's, none renamed and none added
-- (an added column's values would be missing from the undo).
create or replace function pitr.undo_applies(p_snapshot_table bigint, p_strategy text)
returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on
  set jit = off as $$
declare
  v_st pitr.backup_snapshot_tables := (select x from pitr.backup_snapshot_tables x
    where x.id = p_snapshot_table);
  r pitr.restore_sql;
begin
  if p_strategy <> 'overwrite' or v_st.id is null then
    return false;
  end if;
  if not exists (select from pitr.backup_store_heads h where h.store_id = v_st.store_id
      and h.tenant_id = v_st.store_tenant and h.head_seq = v_st.seq) then
    return false;
  end if;
  r := pitr.restore_sql(p_snapshot_table);
  -- Every column of the snapshot under its own name, and no other written one in the table.
  return r.exact and cardinality(r.pk) > 0
    and r.cols = array(select format('%I', c ->> 'name')
      from jsonb_array_elements(v_st.columns) with ordinality x(c, ord) order by ord)
    and cardinality(r.cols) = (select count(*) from pg_attribute a where a.attrelid = r.relid
      and a.attnum > 0 and not a.attisdropped and a.attgenerated = '');
exception when sqlstate 'PT422' or sqlstate 'PT404' then
  return false;
end
$$;

-- Validate reports a column renamed since (info) and checks it under its new name; a snapshot
-- whose columns cannot be told apart (pitr.columns_ambiguous) is refused.
create or replace function pitr.validate_table(p_snapshot_table bigint, p_checksum boolean default true)
returns table (check_name text, ok boolean, severity text, message text)
language plpgsql
set search_path = pg_catalog, pg_temp set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set jit = off
as $$
declare
  v_st pitr.backup_snapshot_tables;
  v_relid oid;
  v_digest text;
  v_pk text[];
  v_col record;
  v_bad bigint;
  v_name text;
  -- The live columns the snapshot's go to.
  v_paired text[] := '{}';
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
      select from pitr.column_pairs(p_snapshot_table) p where p.name = k)) then
    return query select 'primary_key', false, 'error',
      format('the primary key of %s (%s) has columns the snapshot lacks', v_name, array_to_string(v_pk, ', '));
  else
    return query select 'primary_key', true, 'info',
      format('primary key of %s: %s', v_name, array_to_string(v_pk, ', '));
  end if;

  if pitr.columns_ambiguous(p_snapshot_table) then
    return query select 'columns', false, 'error',
      format('a column of %s in the snapshot is missing and the table has a column the snapshot lacks; this snapshot was taken before columns were recorded by identity, so a column renamed since cannot be told from one dropped: take a new snapshot',
        v_name);
    return;
  end if;

  -- Columns of the snapshot: renamed, dropped or retyped since.
  for v_col in
    select p.stored as name, p.name as new_name, p.stored_type as old_type, p.type as new_type,
      p.store_type, p.is_generated, p.renamed
    from pitr.column_pairs(p_snapshot_table) p
  loop
    if v_col.new_name is not null then
      v_paired := v_paired || v_col.new_name;
    end if;
    if v_col.renamed and not v_col.is_generated then
      return query select 'columns', true, 'info',
        format('column %s.%s was renamed to %s since the snapshot; its values are restored there',
          v_name, v_col.name, v_col.new_name);
    end if;
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
            then format('column %s.%s (%s): %s snapshot values would change', v_name, v_col.new_name,
              v_col.new_type, v_bad)
            else format('column %s.%s changed type from %s to %s%s', v_name, v_col.new_name,
              v_col.old_type, v_col.new_type, case when v_bad = 0 then '; every value casts without loss'
                else format('; %s values would change', v_bad) end) end;
      exception when others then
        return query select 'columns', false, 'error',
          case when v_col.new_type = v_col.old_type
            then format('column %s.%s (%s) no longer accepts values of the snapshot: %s', v_name,
              v_col.new_name, v_col.new_type, sqlerrm)
            else format('column %s.%s changed type from %s to %s and its values cannot be cast: %s',
              v_name, v_col.new_name, v_col.old_type, v_col.new_type, sqlerrm) end;
      end;
    end if;
  end loop;

  -- Columns added since: fine when a re-inserted row can leave them out.
  for v_col in
    select c.name from pitr.live_columns(v_relid) c
    where not c.is_generated and c.not_null and not c.has_default
      and c.name <> all (v_paired)
  loop
    return query select 'columns', v_st.row_count = 0,
      case when v_st.row_count = 0 then 'warning' else 'error' end,
      format('column %s.%s was added since the snapshot as NOT NULL without a default; rows re-inserted from the snapshot would have no value for it',
        v_name, v_col.name);
  end loop;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
