-- The restore engine's SQL: every statement that names a tenant table is built here with
-- format('%I') from catalog names, so no caller text is ever pasted into SQL. Rows never leave
-- the database. Functions live in schema pitr (not exposed by PostgREST) and run with a fixed
-- search_path and fixed output settings, so a row's text (hashed for checksums) is the same in
-- every session.

create schema if not exists pitr;
create schema if not exists pitr_store;
revoke all on schema pitr, pitr_store from public;
grant usage on schema pitr, pitr_store to service_role;
alter default privileges in schema pitr revoke execute on functions from public;

-- The service's own tables are never tenant data, even though several have a tenant_id column.
create function pitr.is_service_table(p_relid oid) returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
  select exists (
    select from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = p_relid and n.nspname = 'public'
      and c.relname in ('backup_protected_tables', 'backup_snapshots', 'backup_snapshot_tables',
        'backup_pitr_rollback_history', 'backup_pitr_drills', 'backup_fk_constraints_cache',
        'pitr_settings', 'pitr_capture_tables', 'pitr_changes', 'pitr_changes_default'))
    or exists (
      select from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.oid = p_relid and n.nspname in ('pitr', 'pitr_store', 'supabase_migrations'))
$$;

-- Registry rows first; then every public table with a tenant_id column that has no registry row.
create view pitr.protected_tables as
with registry as (
  select c.oid as relid, p.table_schema, p.table_name, p.tenant_column, p.enabled
  from public.backup_protected_tables p
  join pg_namespace n on n.nspname = p.table_schema
  join pg_class c on c.relnamespace = n.oid and c.relname = p.table_name
  where c.relkind in ('r', 'p')
)
select relid, table_schema::text, table_name::text, tenant_column::text
from registry
where enabled and not pitr.is_service_table(relid)
union all
select c.oid, n.nspname::text, c.relname::text, 'tenant_id'
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition
  and exists (select from pg_attribute a
    where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
  and not pitr.is_service_table(c.oid)
  and not exists (select from registry r where r.relid = c.oid);

-- Foreign keys as read from the catalog: multi-column keys in key order.
create view pitr.fk_edges as
select k.oid as constraint_oid, k.conname::text as constraint_name,
  k.conrelid as child_relid, cn.nspname::text as child_schema, cc.relname::text as child_table,
  (select array_agg(a.attname::text order by x.ord)
     from unnest(k.conkey) with ordinality x(attnum, ord)
     join pg_attribute a on a.attrelid = k.conrelid and a.attnum = x.attnum) as child_columns,
  k.confrelid as parent_relid, pn.nspname::text as parent_schema, pc.relname::text as parent_table,
  (select array_agg(a.attname::text order by x.ord)
     from unnest(k.confkey) with ordinality x(attnum, ord)
     join pg_attribute a on a.attrelid = k.confrelid and a.attnum = x.attnum) as parent_columns,
  k.condeferrable as is_deferrable, k.condeferred as initially_deferred,
  case k.confdeltype when 'a' then 'no action' when 'r' then 'restrict' when 'c' then 'cascade'
    when 'n' then 'set null' when 'd' then 'set default' end as on_delete,
  case k.confupdtype when 'a' then 'no action' when 'r' then 'restrict' when 'c' then 'cascade'
    when 'n' then 'set null' when 'd' then 'set default' end as on_update
from pg_constraint k
join pg_class cc on cc.oid = k.conrelid join pg_namespace cn on cn.oid = cc.relnamespace
join pg_class pc on pc.oid = k.confrelid join pg_namespace pn on pn.oid = pc.relnamespace
where k.contype = 'f' and k.conparentid = 0;

-- Keeps backup_fk_constraints_cache equal to the catalog's FK graph; planning reads from it.
-- It writes only when the graph changed: restores of different tenants refresh it side by side,
-- and rewriting unchanged rows would make each wait for the other's row locks.
create function pitr.refresh_fk_cache() returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_count integer;
begin
  if not exists (
    (select constraint_oid, constraint_name, child_schema, child_table, child_columns,
       parent_schema, parent_table, parent_columns, is_deferrable, initially_deferred, on_delete,
       on_update from pitr.fk_edges
     except
     select constraint_oid, constraint_name, child_schema, child_table, child_columns,
       parent_schema, parent_table, parent_columns, is_deferrable, initially_deferred, on_delete,
       on_update from public.backup_fk_constraints_cache)
    union all
    (select constraint_oid, constraint_name, child_schema, child_table, child_columns,
       parent_schema, parent_table, parent_columns, is_deferrable, initially_deferred, on_delete,
       on_update from public.backup_fk_constraints_cache
     except
     select constraint_oid, constraint_name, child_schema, child_table, child_columns,
       parent_schema, parent_table, parent_columns, is_deferrable, initially_deferred, on_delete,
       on_update from pitr.fk_edges)
  ) then
    return 0;
  end if;
  delete from public.backup_fk_constraints_cache;
  insert into public.backup_fk_constraints_cache (constraint_oid, constraint_name, child_schema,
    child_table, child_columns, parent_schema, parent_table, parent_columns, is_deferrable,
    initially_deferred, on_delete, on_update)
  select constraint_oid, constraint_name, child_schema, child_table, child_columns, parent_schema,
    parent_table, parent_columns, is_deferrable, initially_deferred, on_delete, on_update
  from pitr.fk_edges;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;

create function pitr.primary_key_of(p_relid oid) returns text[]
language sql stable set search_path = pg_catalog, pg_temp as $$
  select array_agg(a.attname::text order by k.ord)
  from pg_index i
  cross join unnest(i.indkey) with ordinality k(attnum, ord)
  join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
  where i.indrelid = p_relid and i.indisprimary
$$;

create function pitr.live_columns(p_relid oid)
returns table (name text, type text, type_oid oid, is_generated boolean, identity_always boolean,
  not_null boolean, has_default boolean)
language sql stable set search_path = pg_catalog, pg_temp as $$
  select a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid, a.attgenerated <> '',
    a.attidentity = 'a', a.attnotnull, a.atthasdef or a.attidentity <> ''
  from pg_attribute a
  where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped
  order by a.attnum
$$;

-- A predicate on alias l selecting one tenant's rows that can use an index on the tenant column:
-- the tenant id is cast to the column's type, and matches nothing when the cast does not give
-- back the same text (the ids compare as tenant_column::text).
create function pitr.tenant_predicate(p_relid oid, p_tenant_column text, p_tenant text)
returns text
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_type text;
  v_back text;
begin
  select format_type(a.atttypid, a.atttypmod) into v_type
  from pg_attribute a
  where a.attrelid = p_relid and a.attname = p_tenant_column and a.attnum > 0
    and not a.attisdropped;
  if v_type is null then
    raise exception 'tenant column % is missing', p_tenant_column using errcode = 'PT404';
  end if;
  begin
    execute format('select (%L::%s)::text', p_tenant, v_type) into v_back;
  exception when others then
    return 'false';
  end;
  if v_back is distinct from p_tenant then
    return 'false';
  end if;
  return format('l.%I = %L::%s', p_tenant_column, p_tenant, v_type);
end
$$;

-- An order-independent digest of a set of rows: the row count and the sum of a 64-bit hash of
-- each row. The hash is hash_record_extended, built from each column type's own hash function
-- (the ones hash partitioning relies on, stable across versions) and far cheaper than hashing a
-- row's text. A row with a column type that has no hash function (json, xml, point) is hashed
-- by its text instead, with the settings that shape a value's text pinned by the SET clauses.
create function pitr.digest(p_from text, p_exprs text[]) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex'
as $$
declare
  v text;
  v_sql text := 'select count(*)::text || '':'' || coalesce(sum(%s::numeric), 0)::text from %s';
begin
  begin
    execute format(v_sql, format('hash_record_extended(row(%s), 0)', array_to_string(p_exprs, ', ')),
      p_from) into v;
  exception when undefined_function then
    execute format(v_sql, format('hashtextextended(row(%s)::text, 0)', array_to_string(p_exprs, ', ')),
      p_from) into v;
  end;
  return v;
end
$$;

-- Copies one table's rows of the snapshot's tenant into a typed table in pitr_store (the fastest
-- and smallest of the stores measured) and records its columns, key, row count and checksum.
-- Call it inside the snapshot's one REPEATABLE READ transaction.
create function pitr.snapshot_table(p_snapshot uuid, p_position integer, p_relid oid)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex'
as $$
declare
  v_tenant text;
  v_table record;
  v_cols jsonb;
  v_names text[];
  v_pk text[];
  v_id bigint;
  v_store text;
  v_rows bigint;
begin
  select tenant_id into v_tenant from public.backup_snapshots where id = p_snapshot;
  select * into v_table from pitr.protected_tables where relid = p_relid;
  if not found then
    raise exception 'table % is not protected', p_relid::regclass using errcode = 'PT404';
  end if;
  v_pk := pitr.primary_key_of(p_relid);
  if v_pk is null then
    raise exception 'table %.% has no primary key', v_table.table_schema, v_table.table_name
      using errcode = 'PT422';
  end if;
  -- Generated columns are left out: they are recomputed on restore.
  select jsonb_agg(jsonb_build_object('name', c.name, 'type', c.type)), array_agg(c.name)
  into v_cols, v_names
  from pitr.live_columns(p_relid) c where not c.is_generated;

  insert into public.backup_snapshot_tables (snapshot_id, tenant_id, position, table_schema,
    table_name, tenant_column, columns, primary_key)
  values (p_snapshot, v_tenant, p_position, v_table.table_schema, v_table.table_name,
    v_table.tenant_column, v_cols, v_pk)
  returning id into v_id;
  v_store := 't' || v_id;

  execute format('create table pitr_store.%I as select %s from %I.%I l where %s',
    v_store,
    (select string_agg(format('%I', n), ', ') from unnest(v_names) n),
    v_table.table_schema, v_table.table_name,
    pitr.tenant_predicate(p_relid, v_table.tenant_column, v_tenant));
  get diagnostics v_rows = row_count;

  update public.backup_snapshot_tables
  set store_table = v_store, row_count = v_rows,
    checksum = pitr.digest(format('pitr_store.%I', v_store),
      array(select format('%I', n) from unnest(v_names) n))
  where id = v_id;
  return v_id;
end
$$;

-- Drops a snapshot and its stored rows.
create function pitr.drop_snapshot(p_snapshot uuid) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_store text;
begin
  for v_store in
    select store_table from public.backup_snapshot_tables
    where snapshot_id = p_snapshot and store_table is not null
  loop
    execute format('drop table if exists pitr_store.%I', v_store);
  end loop;
  delete from public.backup_snapshots where id = p_snapshot;
end
$$;

-- The pieces of SQL that restoring one snapshot table into its live table needs, all quoted.
create type pitr.restore_sql as (
  relid oid,
  live text,         -- "schema"."table"
  store text,        -- pitr_store."tN"
  tenant_pred text,  -- on alias l
  cols text[],       -- quoted names of the columns restored: in the snapshot and writable now
  exprs text[],      -- the snapshot's value of each, on alias s, cast to today's type
  pk text[],         -- quoted primary key columns of the live table
  upd text[],        -- columns an UPDATE may set: cols less the key and GENERATED ALWAYS identity
  overriding boolean,-- a GENERATED ALWAYS identity column is written
  exact boolean,     -- every snapshot column is restored as it is: the recorded checksum applies
  checksum text,     -- the snapshot table's recorded checksum
  writes text,       -- pg_temp table of the store rows a restore writes (see table_diff)
  deletes text       -- pg_temp table of the live rows a restore deletes
);

create function pitr.restore_sql(p_snapshot_table bigint) returns pitr.restore_sql
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_st public.backup_snapshot_tables;
  r pitr.restore_sql;
  v_pk text[];
begin
  select * into v_st from public.backup_snapshot_tables where id = p_snapshot_table;
  if not found then
    raise exception 'snapshot table % not found', p_snapshot_table using errcode = 'PT404';
  end if;
  r.relid := to_regclass(format('%I.%I', v_st.table_schema, v_st.table_name));
  if r.relid is null then
    raise exception 'table %.% no longer exists', v_st.table_schema, v_st.table_name
      using errcode = 'PT422';
  end if;
  r.live := format('%I.%I', v_st.table_schema, v_st.table_name);
  r.store := format('pitr_store.%I', v_st.store_table);
  r.tenant_pred := pitr.tenant_predicate(r.relid, v_st.tenant_column, v_st.tenant_id);
  r.checksum := v_st.checksum;
  r.writes := format('pg_temp.%I', 'pitr_write_' || p_snapshot_table);
  r.deletes := format('pg_temp.%I', 'pitr_delete_' || p_snapshot_table);
  v_pk := pitr.primary_key_of(r.relid);
  if v_pk is null then
    raise exception 'table %.% has no primary key now', v_st.table_schema, v_st.table_name
      using errcode = 'PT422';
  end if;

  select array_agg(format('%I', c.name) order by s.ord),
    array_agg(case when c.type = s.col ->> 'type' then format('s.%I', c.name)
      else format('s.%I::%s', c.name, c.type) end order by s.ord),
    coalesce(array_agg(format('%I', c.name) order by s.ord)
      filter (where not c.identity_always and c.name <> all (v_pk)), '{}'),
    coalesce(bool_or(c.identity_always), false),
    count(*) = jsonb_array_length(v_st.columns) and bool_and(c.type = s.col ->> 'type')
  into r.cols, r.exprs, r.upd, r.overriding, r.exact
  from jsonb_array_elements(v_st.columns) with ordinality s(col, ord)
  join pitr.live_columns(r.relid) c on c.name = s.col ->> 'name' and not c.is_generated;

  if exists (select from unnest(v_pk) k
      where not exists (select from jsonb_array_elements(v_st.columns) c
        where c ->> 'name' = k)) then
    raise exception 'the primary key of %.% is not in the snapshot', v_st.table_schema,
      v_st.table_name using errcode = 'PT422';
  end if;
  r.pk := array(select format('%I', k) from unnest(v_pk) k);
  return r;
end
$$;

-- The snapshot's rows of one table as they would be written today; with p_rows, only the store
-- rows whose ctids that subquery yields (a batch of the write set).
create function pitr.target_sql(r pitr.restore_sql, p_rows text default null) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select format('(select s.ctid as pitr_ctid, %s from %s s%s)',
    (select string_agg(format('%s as %s', e, c), ', ') from unnest(r.exprs, r.cols) x(e, c)),
    r.store,
    case when p_rows is null then '' else format(' where s.ctid = any (array(%s))', p_rows) end)
$$;

create function pitr.join_on(p_cols text[], p_left text, p_right text) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select string_agg(format('%s.%s = %s.%s', p_left, c, p_right, c), ' and ')
  from unnest(p_cols) c
$$;

create function pitr.row_of(p_cols text[], p_alias text) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select format('row(%s)', string_agg(format('%s.%s', p_alias, c), ', '))
  from unnest(p_cols) c
$$;

-- What restoring one table would do, by primary key, in one pass over the snapshot's rows and
-- the tenant's rows. Rows compare by their binary image (record_image_ne, as REFRESH
-- MATERIALIZED VIEW CONCURRENTLY does), which is stricter than = (1.0 and 1.00 differ). conflicts: snapshot rows to insert whose key now belongs to
-- another tenant's row (the insert would fail).
-- With p_materialize (inside a restore's transaction), the rows to write and to delete are kept
-- in temporary tables (restore_sql.writes, .deletes) for restore_delete and restore_write.
create function pitr.table_diff(p_snapshot_table bigint, p_strategy text,
  p_materialize boolean default false)
returns table (ins bigint, upd bigint, del bigint, unchanged bigint, conflicts bigint)
language plpgsql
set search_path = pg_catalog, pg_temp set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_rows bigint := (select row_count from public.backup_snapshot_tables where id = p_snapshot_table);
  v_matched text := format('l.%s is not null', r.pk[1]);
  v_differs text := format('record_image_ne(%s, %s)', pitr.row_of(r.cols, 'l'), pitr.row_of(r.cols, 't'));
  v_ins bigint := 0; v_upd bigint := 0; v_del bigint := 0; v_conf bigint := 0;
begin
  if p_strategy = 'merge' then
    v_differs := 'false';
  end if;
  execute format('drop table if exists %s; create temp table %s on commit drop as
      select row_number() over () as n, t.pitr_ctid as sctid, not (%s) as ins
      from %s t left join %s l on %s and %s
      where not (%s) or %s',
    r.writes, r.writes, v_matched, pitr.target_sql(r), r.live, pitr.join_on(r.pk, 'l', 't'),
    r.tenant_pred, v_matched, v_differs);
  execute format('select count(*) filter (where ins), count(*) filter (where not ins) from %s',
    r.writes) into v_ins, v_upd;
  if p_strategy = 'overwrite' then
    execute format('drop table if exists %s; create temp table %s on commit drop as
        select l.* from %s l where %s and not exists (select from %s s where %s)',
      r.deletes, r.deletes, r.live, r.tenant_pred, r.store,
      (select string_agg(format('l.%s = %s', c, e), ' and ')
         from unnest(r.cols, r.exprs) x(c, e) where c = any (r.pk)));
    get diagnostics v_del = row_count;
  end if;
  if not p_materialize then
    -- A preview also counts the keys taken by other tenants (a restore fails on them instead).
    execute format('select count(*) from %s t where exists (select from %s l where %s)',
      pitr.target_sql(r, format('select sctid from %s where ins', r.writes)), r.live,
      pitr.join_on(r.pk, 'l', 't'))
    into v_conf;
    execute format('drop table %s', r.writes);
    execute format('drop table if exists %s', r.deletes);
  end if;
  return query select v_ins, v_upd, v_del, v_rows - v_ins - v_upd, v_conf;
end
$$;

-- Overwrite, step 1: deletes the tenant's rows that table_diff found missing from the snapshot.
-- The deleted rows stay in restore_sql.deletes until commit for the foreign-key check.
create function pitr.restore_delete(p_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_rows bigint;
begin
  execute format('delete from %s l using %s d where %s and %s',
    r.live, r.deletes, pitr.join_on(r.pk, 'l', 'd'), r.tenant_pred);
  get diagnostics v_rows = row_count;
  return v_rows;
end
$$;

-- Step 2, one batch (rows p_from <= n < p_to of table_diff's write set): updates the tenant's
-- rows that differ from the snapshot and inserts the snapshot rows that are missing. Rows equal
-- to the snapshot are not in the write set and are not written. A key held by another tenant's
-- row makes the insert fail: the restore never takes or skips another tenant's row.
create function pitr.restore_write(p_snapshot_table bigint, p_from bigint, p_to bigint)
returns table (updated bigint, inserted bigint)
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_batch text := format('select sctid from %s where n >= %s and n < %s', r.writes, p_from, p_to);
  v_upd bigint := 0;
  v_ins bigint := 0;
begin
  if cardinality(r.upd) > 0 then
    execute format('update %s l set (%s) = row(%s) from %s t where %s and %s',
      r.live, array_to_string(r.upd, ', '),
      (select string_agg('t.' || c, ', ') from unnest(r.upd) c),
      pitr.target_sql(r, v_batch || ' and not ins'), pitr.join_on(r.pk, 'l', 't'), r.tenant_pred);
    get diagnostics v_upd = row_count;
  end if;
  execute format('insert into %s (%s) %s select %s from %s t',
    r.live, array_to_string(r.cols, ', '),
    case when r.overriding then 'overriding system value' else '' end,
    (select string_agg('t.' || c, ', ') from unnest(r.cols) c),
    pitr.target_sql(r, v_batch || ' and ins'));
  get diagnostics v_ins = row_count;
  return query select v_upd, v_ins;
end
$$;

create function pitr.write_count(p_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v bigint;
begin
  execute format('select count(*) from %s', (pitr.restore_sql(p_snapshot_table)).writes) into v;
  return v;
end
$$;

-- Moves each serial or identity sequence of the table past the largest value now in it. Only
-- forward: a sequence never goes back, whatever other tenants have taken.
create function pitr.move_sequences(p_relid oid) returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_col record;
  v_seq text;
  v_max bigint;
  v_moved integer := 0;
begin
  for v_col in select c.name from pitr.live_columns(p_relid) c
      where c.type in ('smallint', 'integer', 'bigint') loop
    v_seq := pg_get_serial_sequence(p_relid::regclass::text, v_col.name);
    continue when v_seq is null;
    execute format('select max(%I)::bigint from %s', v_col.name, p_relid::regclass) into v_max;
    continue when v_max is null;
    execute format(
      'select setval(%L, %s) from %s where last_value < %s or not is_called',
      v_seq, v_max, v_seq, v_max);
    v_moved := v_moved + 1;
  end loop;
  return v_moved;
end
$$;

-- Before commit: the tenant's rows equal the snapshot's (overwrite), or every snapshot key is
-- present (merge). When every column is restored as stored, the live rows are compared with the
-- checksum recorded when the snapshot was taken, so a store altered since cannot pass either.
create function pitr.verify_table(p_snapshot_table bigint, p_strategy text)
returns table (ok boolean, live_digest text, expected_digest text)
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_live text;
  v_expected text;
  v_missing bigint;
begin
  if p_strategy = 'overwrite' then
    v_live := pitr.digest(format('%s l where %s', r.live, r.tenant_pred),
      array(select 'l.' || c from unnest(r.cols) c));
    v_expected := case when r.exact then r.checksum
      else pitr.digest(pitr.target_sql(r) || ' t', array(select 't.' || c from unnest(r.cols) c)) end;
    return query select v_live = v_expected, v_live, v_expected;
  else
    execute format('select count(*) from %s t where not exists (select from %s l where %s and %s)',
      pitr.target_sql(r), r.live, pitr.join_on(r.pk, 'l', 't'), r.tenant_pred)
    into v_missing;
    return query select v_missing = 0, (v_missing || ' missing')::text, '0 missing'::text;
  end if;
end
$$;

-- Foreign-key checks. Triggers (the FK ones included) are off during a restore so that the
-- application's triggers never touch restored rows; these queries check the same integrity for
-- the rows the restore wrote or deleted, before commit. Rows it did not touch were checked by
-- the FK triggers when they were written.
create function pitr.fk_condition(p_fk oid, p_child text, p_parent text,
  out not_null text, out joined text)
language sql stable set search_path = pg_catalog, pg_temp as $$
  select string_agg(format('%s.%I is not null', p_child, c), ' and '),
    string_agg(format('%s.%I = %s.%I', p_child, c, p_parent, p), ' and ')
  from pitr.fk_edges e, unnest(e.child_columns, e.parent_columns) x(c, p)
  where e.constraint_oid = p_fk
$$;

-- Rows the restore wrote into a child table that point at no parent row.
create function pitr.fk_dangling_children(p_fk oid, p_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  e record := (select x from pitr.fk_edges x where x.constraint_oid = p_fk);
  f record := pitr.fk_condition(p_fk, 't', 'p');
  v bigint;
begin
  execute format('select count(*) from %s t where %s and not exists (select from %I.%I p where %s)',
    pitr.target_sql(r, format('select sctid from %s', r.writes)), f.not_null,
    e.parent_schema, e.parent_table, f.joined) into v;
  return v;
end
$$;

-- Rows of any tenant in a child table that pointed at rows the restore deleted from its parent,
-- and whose parent key is not there any more.
create function pitr.fk_orphans_of_deleted(p_fk oid, p_parent_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_parent_snapshot_table);
  e record := (select x from pitr.fk_edges x where x.constraint_oid = p_fk);
  f record := pitr.fk_condition(p_fk, 'c', 'd');
  g record := pitr.fk_condition(p_fk, 'c', 'p');
  v bigint;
begin
  if to_regclass(r.deletes) is null then
    return 0;
  end if;
  execute format('select count(*) from %I.%I c where exists (select from %s d where %s)
      and not exists (select from %I.%I p where %s)',
    e.child_schema, e.child_table, r.deletes, f.joined, e.parent_schema, e.parent_table, g.joined)
  into v;
  return v;
end
$$;

-- Planning a partial restore: snapshot rows of a restored child table that would point at a
-- parent row missing now in a table outside the restored set.
create function pitr.fk_missing_parents(p_fk oid, p_child_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_child_snapshot_table);
  e record := (select x from pitr.fk_edges x where x.constraint_oid = p_fk);
  f record := pitr.fk_condition(p_fk, 't', 'p');
  v bigint;
begin
  execute format('select count(*) from %s t where %s and not exists (select from %I.%I p where %s)',
    pitr.target_sql(r), f.not_null, e.parent_schema, e.parent_table, f.joined) into v;
  return v;
end
$$;

-- Planning: rows of a child table outside the restored set (any tenant) pointing at rows that
-- overwriting the parent would delete.
create function pitr.fk_children_of_deleted(p_fk oid, p_parent_snapshot_table bigint)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_parent_snapshot_table);
  e record := (select x from pitr.fk_edges x where x.constraint_oid = p_fk);
  f record := pitr.fk_condition(p_fk, 'c', 'l');
  v bigint;
begin
  execute format('select count(*) from %I.%I c where exists (select from %s l where %s and %s
      and not exists (select from %s t where %s))',
    e.child_schema, e.child_table, r.live, r.tenant_pred, f.joined, pitr.target_sql(r),
    pitr.join_on(r.pk, 'l', 't')) into v;
  return v;
end
$$;

-- Is the snapshot table intact, and does it still fit the live table? One row per check.
-- severity 'error' makes the snapshot unrestorable; 'warning' is reported and allowed.
create function pitr.validate_table(p_snapshot_table bigint, p_checksum boolean default true)
returns table (check_name text, ok boolean, severity text, message text)
language plpgsql
set search_path = pg_catalog, pg_temp set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex'
as $$
declare
  v_st public.backup_snapshot_tables;
  v_relid oid;
  v_digest text;
  v_pk text[];
  v_col record;
  v_bad bigint;
  v_name text;
begin
  select * into v_st from public.backup_snapshot_tables where id = p_snapshot_table;
  v_name := format('%s.%s', v_st.table_schema, v_st.table_name);
  if v_st.store_table is null
      or to_regclass(format('pitr_store.%I', v_st.store_table)) is null then
    return query select 'checksum', false, 'error', format('the stored rows of %s are missing', v_name);
    return;
  end if;
  -- A restore skips this pass: it compares what it wrote with the recorded checksum instead.
  v_digest := case when p_checksum then pitr.digest(format('pitr_store.%I', v_st.store_table),
    array(select format('%I', c ->> 'name') from jsonb_array_elements(v_st.columns) c))
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
    return query select 'primary_key', false, 'error', format('table %s has no primary key now', v_name);
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
      c.is_generated
    from jsonb_array_elements(v_st.columns) s(col)
    left join pitr.live_columns(v_relid) c on c.name = s.col ->> 'name'
  loop
    if v_col.new_type is null or v_col.is_generated then
      execute format('select count(*) from pitr_store.%I where %I is not null', v_st.store_table, v_col.name)
      into v_bad;
      return query select 'columns', v_bad = 0, case when v_bad = 0 then 'warning' else 'error' end,
        format('column %s.%s was dropped since the snapshot%s', v_name, v_col.name,
          case when v_bad = 0 then ' (it held only NULLs)'
            else format('; %s rows hold values that would be lost', v_bad) end);
    elsif v_col.new_type <> v_col.old_type then
      begin
        -- A value survives the new type when it casts there and back unchanged.
        execute format('select count(*) from pitr_store.%I s where s.%I::%s::%s is distinct from s.%I',
          v_st.store_table, v_col.name, v_col.new_type, v_col.old_type, v_col.name)
        into v_bad;
        return query select 'columns', v_bad = 0, case when v_bad = 0 then 'warning' else 'error' end,
          format('column %s.%s changed type from %s to %s%s', v_name, v_col.name, v_col.old_type,
            v_col.new_type, case when v_bad = 0 then '; every value casts without loss'
              else format('; %s values would change', v_bad) end);
      exception when others then
        return query select 'columns', false, 'error',
          format('column %s.%s changed type from %s to %s and its values cannot be cast: %s',
            v_name, v_col.name, v_col.old_type, v_col.new_type, sqlerrm);
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
