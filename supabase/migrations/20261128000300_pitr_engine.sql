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
        'backup_stores', 'backup_store_heads',
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
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
  select array_agg(a.attname::text order by k.ord)
  from pg_index i
  cross join unnest(i.indkey) with ordinality k(attnum, ord)
  join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
  where i.indrelid = p_relid and i.indisprimary
$$;

create function pitr.live_columns(p_relid oid)
returns table (name text, type text, type_oid oid, is_generated boolean, identity_always boolean,
  not_null boolean, has_default boolean)
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
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
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
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
-- row's text. Tables with a column type that has no hash function (json, xml, point) hash each
-- row's text instead, with the settings that shape a value's text pinned by the SET clauses.
create function pitr.row_hash_sql(p_exprs text[], p_by_text boolean) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select format(case when p_by_text then 'hashtextextended(row(%s)::text, 0)'
    else 'hash_record_extended(row(%s), 0)' end, array_to_string(p_exprs, ', '))
$$;

-- Whether rows of these types must be hashed by their text. Decided from the types alone (the
-- lookup fails for a NULL of such a type too), so every row of a store is hashed the same way.
create function pitr.hash_by_text(p_types text[]) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  execute format('select hash_record_extended(row(%s), 0)',
    (select string_agg(format('null::%s', t), ', ') from unnest(p_types) t));
  return false;
exception when undefined_function then
  return true;
end
$$;

create function pitr.digest(p_from text, p_exprs text[], p_by_text boolean) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex'
as $$
declare
  v text;
begin
  execute format('select count(*)::text || '':'' || coalesce(sum(%s::numeric), 0)::text from %s',
    pitr.row_hash_sql(p_exprs, p_by_text), p_from)
  into v;
  return v;
end
$$;

-- The functions that join a tenant's rows with a snapshot's run with work_mem = 64MB, so that
-- the hash of a 100k-row tenant stays in memory instead of spilling in batches to disk.

-- Snapshot storage. Each table has a store per column signature, pitr_store.sN: its columns, then
-- pitr_tenant, and the range of snapshot seqs [pitr_from, pitr_to) a row version belongs to
-- (pitr_to null: still in the tenant's latest snapshot of the table), and the row's hash. A new
-- snapshot writes only the versions that changed since the tenant's latest snapshot of the table,
-- so a second snapshot of an unchanged tenant stores nothing.
create function pitr.store_for(p_relid oid) returns public.backup_stores
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_schema text;
  v_table text;
  v_cols jsonb;
  v_store public.backup_stores;
  v_name text;
begin
  select n.nspname, c.relname into v_schema, v_table
  from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = p_relid;
  select jsonb_agg(jsonb_build_object('name', c.name, 'type', c.type)) into v_cols
  from pitr.live_columns(p_relid) c where not c.is_generated;
  select * into v_store from public.backup_stores
  where table_schema = v_schema and table_name = v_table and columns = v_cols;
  if found then
    return v_store;
  end if;
  -- Serialise the creation of a table's store between concurrent snapshots.
  perform pg_advisory_xact_lock(hashtext('pitr:store'), p_relid::int4);
  select * into v_store from public.backup_stores
  where table_schema = v_schema and table_name = v_table and columns = v_cols;
  if found then
    return v_store;
  end if;
  v_name := 's' || nextval(pg_get_serial_sequence('public.backup_stores', 'id'));
  execute format('create table pitr_store.%I (%s, pitr_tenant text not null,
      pitr_from bigint not null, pitr_to bigint, pitr_hash bigint not null)',
    v_name, (select string_agg(format('%I %s', c ->> 'name', c ->> 'type'), ', ')
      from jsonb_array_elements(v_cols) c));
  -- BRIN, not btree: a snapshot appends a tenant's rows together, so block ranges find them,
  -- and keeping a btree entry per row cost as much as writing the rows (measured: 100k rows
  -- inserted in 0.19 s with no index, 0.24 s with BRIN, 0.30-0.35 s with a btree).
  execute format('create index on pitr_store.%I using brin (pitr_tenant, pitr_from)
      with (autosummarize = on)', v_name);
  insert into public.backup_stores (id, table_schema, table_name, columns, store_table, hash_by_text)
  overriding system value
  values (substr(v_name, 2)::bigint, v_schema, v_table, v_cols, v_name,
    pitr.hash_by_text(array(select c ->> 'type' from jsonb_array_elements(v_cols) c)))
  returning * into v_store;
  return v_store;
end
$$;

-- Which versions of a store make up one tenant's snapshot seq, on alias s.
create function pitr.members(p_tenant text, p_seq bigint) returns text
language sql immutable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
  select format('s.pitr_tenant = %L and s.pitr_from <= %s and (s.pitr_to is null or s.pitr_to > %s)',
    p_tenant, p_seq, p_seq)
$$;

-- Records snapshot p_seq of a tenant's rows of one table into the table's store. p_source is a
-- query built by the engine (never caller text) yielding the store's columns on alias l. Versions
-- equal to a row (by key and binary image) stay open; the others are closed at p_seq, and the
-- rows without an equal open version are added. Returns the snapshot's row count and checksum,
-- kept per tenant in backup_store_heads so that they follow from the changes alone.
create function pitr.store_rows(p_store_id bigint, p_tenant text, p_seq bigint, p_pk text[],
  p_source text, out stored_rows bigint, out stored_checksum text)
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex'
as $$
declare
  st public.backup_stores := (select x from public.backup_stores x where x.id = p_store_id);
  v_cols text[] := array(select format('%I', c ->> 'name') from jsonb_array_elements(st.columns) c);
  v_list text := array_to_string(v_cols, ', ');
  v_l text := (select string_agg('l.' || c, ', ') from unnest(v_cols) c);
  v_d text := (select string_agg('d.' || c, ', ') from unnest(v_cols) c);
  v_pk text[] := array(select format('%I', k) from unnest(p_pk) k);
  v_head public.backup_store_heads;
  v_rows bigint;
  v_sum numeric;
begin
  select * into v_head from public.backup_store_heads where store_id = p_store_id and tenant_id = p_tenant
  for update;
  if not found then
    execute format('with added as (insert into pitr_store.%I (%s, pitr_tenant, pitr_from, pitr_hash)
        select %s, %L, %s, %s from %s l returning pitr_hash)
      select count(*), coalesce(sum(pitr_hash::numeric), 0) from added',
      st.store_table, v_list, v_l, p_tenant, p_seq,
      pitr.row_hash_sql(array(select 'l.' || c from unnest(v_cols) c), st.hash_by_text), p_source)
    into v_rows, v_sum;
    insert into public.backup_store_heads values (p_store_id, p_tenant, v_rows, v_sum)
    returning * into v_head;
  else
    execute format('with d as materialized (
        select l.*, v.pitr_vctid, l.%1$s is not null as pitr_new
        from %2$s l
        full join (select s.ctid as pitr_vctid, s.* from pitr_store.%3$I s
          where s.pitr_tenant = %4$L and s.pitr_to is null) v on %5$s
        where l.%1$s is null or v.%1$s is null or record_image_ne(row(%6$s), row(%7$s))),
      closed as (update pitr_store.%3$I s set pitr_to = %8$s
        where s.ctid = any (array(select pitr_vctid from d where pitr_vctid is not null))
        returning s.pitr_hash),
      added as (insert into pitr_store.%3$I (%9$s, pitr_tenant, pitr_from, pitr_hash)
        select %10$s, %4$L, %8$s, %11$s from d where d.pitr_new returning pitr_hash)
      select (select count(*) from added) - (select count(*) from closed),
        (select coalesce(sum(pitr_hash::numeric), 0) from added)
          - (select coalesce(sum(pitr_hash::numeric), 0) from closed)',
      v_pk[1], p_source, st.store_table, p_tenant,
      pitr.join_on(v_pk, 'l', 'v'), v_l, (select string_agg('v.' || c, ', ') from unnest(v_cols) c),
      p_seq, v_list, v_d,
      pitr.row_hash_sql(array(select 'd.' || c from unnest(v_cols) c), st.hash_by_text))
    into v_rows, v_sum;
    update public.backup_store_heads
    set row_count = row_count + v_rows, hash_sum = hash_sum + v_sum
    where store_id = p_store_id and tenant_id = p_tenant
    returning * into v_head;
  end if;
  stored_rows := v_head.row_count;
  stored_checksum := v_head.row_count || ':' || v_head.hash_sum;
end
$$;

-- Records one table's rows of the snapshot's tenant in the table's store (typed, the fastest
-- and smallest of the stores measured), with the columns, key, row count and checksum.
-- Call it inside the snapshot's one REPEATABLE READ transaction.
create function pitr.snapshot_table(p_snapshot uuid, p_position integer, p_relid oid)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_table record;
begin
  select * into v_table from pitr.protected_tables where relid = p_relid;
  if not found then
    raise exception 'table % is not protected', p_relid::regclass using errcode = 'PT404';
  end if;
  return pitr.snapshot_table_from(p_snapshot, p_position, p_relid, format('(select %s from %I.%I l where %s)',
    (select string_agg(format('l.%I', c.name), ', ') from pitr.live_columns(p_relid) c
      where not c.is_generated),
    v_table.table_schema, v_table.table_name,
    pitr.tenant_predicate(p_relid, v_table.tenant_column,
      (select tenant_id from public.backup_snapshots where id = p_snapshot))));
end
$$;

-- The part of a snapshot every source shares: p_source (built by the engine) yields the table's
-- non-generated columns, today's types, for the snapshot's tenant.
create function pitr.snapshot_table_from(p_snapshot uuid, p_position integer, p_relid oid,
  p_source text)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_snap public.backup_snapshots := (select x from public.backup_snapshots x where x.id = p_snapshot);
  v_table record;
  v_pk text[];
  v_store public.backup_stores;
  v_id bigint;
  v_stored record;
begin
  select * into v_table from pitr.protected_tables where relid = p_relid;
  v_pk := pitr.primary_key_of(p_relid);
  if v_pk is null then
    raise exception 'table %.% has no primary key', v_table.table_schema, v_table.table_name
      using errcode = 'PT422';
  end if;
  v_store := pitr.store_for(p_relid);
  v_stored := pitr.store_rows(v_store.id, v_snap.tenant_id, v_snap.seq, v_pk, p_source);
  insert into public.backup_snapshot_tables (snapshot_id, tenant_id, position, table_schema,
    table_name, tenant_column, store_id, store_table, seq, columns, primary_key, row_count, checksum)
  values (p_snapshot, v_snap.tenant_id, p_position, v_table.table_schema, v_table.table_name,
    v_table.tenant_column, v_store.id, v_store.store_table, v_snap.seq, v_store.columns, v_pk,
    v_stored.stored_rows, v_stored.stored_checksum)
  returning id into v_id;
  return v_id;
end
$$;

-- Drops a snapshot, and the row versions that no other snapshot of its tenant covers. The
-- versions still open stay: they are what the tenant's next snapshot is compared with.
create function pitr.drop_snapshot(p_snapshot uuid) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_st record;
begin
  create temp table if not exists pitr_dropped (store_id bigint, store_table text, tenant_id text)
    on commit drop;
  insert into pitr_dropped
  select distinct store_id, store_table, tenant_id from public.backup_snapshot_tables
  where snapshot_id = p_snapshot;
  delete from public.backup_snapshots where id = p_snapshot;
  for v_st in select distinct * from pitr_dropped loop
    execute format('delete from pitr_store.%I s where s.pitr_tenant = %L and s.pitr_to is not null
        and not exists (select from public.backup_snapshot_tables t where t.store_id = %s
          and t.tenant_id = %L and t.seq >= s.pitr_from and t.seq < s.pitr_to)',
      v_st.store_table, v_st.tenant_id, v_st.store_id, v_st.tenant_id);
  end loop;
  delete from pitr_dropped;
end
$$;

-- The pieces of SQL that restoring one snapshot table into its live table needs, all quoted.
create type pitr.restore_sql as (
  relid oid,
  live text,         -- "schema"."table"
  store text,        -- pitr_store."sN"
  members text,      -- which of the store's versions are this snapshot's rows, on alias s
  by_text boolean,   -- the store hashes rows by their text
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
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
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
  r.members := pitr.members(v_st.tenant_id, v_st.seq);
  r.by_text := (select hash_by_text from public.backup_stores where id = v_st.store_id);
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
-- rows whose ctids that tid[] expression holds (a batch of the write set).
create function pitr.target_sql(r pitr.restore_sql, p_rows text default null) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  -- A batch (p_rows: an expression of type tid[]) is fetched by TID scan in a subquery of its
  -- own (offset 0 keeps the planner from merging it): given the tenant predicate too, it could
  -- scan the tenant's rows and test each against the whole TID list.
  select format('(select s.ctid as pitr_ctid, %s from %s s where %s)',
    (select string_agg(format('%s as %s', e, c), ', ') from unnest(r.exprs, r.cols) x(e, c)),
    case when p_rows is null then r.store
      else format('(select s.ctid, s.* from %s s where s.ctid = any (%s) offset 0)',
        r.store, p_rows) end,
    r.members)
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
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off set timezone = 'UTC' set datestyle = 'ISO, YMD'
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
  if not p_materialize then
    -- A preview counts in one pass, and also counts the keys taken by other tenants (a restore
    -- fails on those instead).
    execute format('with l as materialized (select * from %s l where %s)
        select count(*) filter (where not (%s)),
          count(*) filter (where %s and %s),
          count(*) filter (where not (%s) and exists (select from %s o where %s))
        from %s t left join l on %s',
      r.live, r.tenant_pred, v_matched, v_matched, v_differs, v_matched, r.live,
      pitr.join_on(r.pk, 'o', 't'), pitr.target_sql(r), pitr.join_on(r.pk, 'l', 't'))
    into v_ins, v_upd, v_conf;
    if p_strategy = 'overwrite' then
      execute format('select count(*) from %s l where %s and not exists (select from %s s where %s and %s)',
        r.live, r.tenant_pred, r.store, r.members,
        (select string_agg(format('l.%s = %s', c, e), ' and ')
           from unnest(r.cols, r.exprs) x(c, e) where c = any (r.pk)))
      into v_del;
    end if;
    return query select v_ins, v_upd, v_del, v_rows - v_ins - v_upd, v_conf;
    return;
  end if;
  -- The tenant's rows are read once and hashed: probing the key index once per snapshot row
  -- costs several times more for a whole tenant.
  execute format('drop table if exists %s; create temp table %s on commit drop as
      with l as materialized (select l.ctid as pitr_lctid, l.* from %s l where %s)
      select row_number() over () as n, t.pitr_ctid as sctid, l.pitr_lctid as lctid,
        not (%s) as ins
      from %s t left join l on %s
      where not (%s) or %s',
    r.writes, r.writes, r.live, r.tenant_pred, v_matched, pitr.target_sql(r),
    pitr.join_on(r.pk, 'l', 't'), v_matched, v_differs);
  -- Batches select their rows by n: without an index each would scan the whole write set.
  execute format('create index on %s (n); analyze %s', r.writes, r.writes);
  execute format('select count(*) filter (where ins), count(*) filter (where not ins) from %s',
    r.writes) into v_ins, v_upd;
  if p_strategy = 'overwrite' then
    execute format('drop table if exists %s; create temp table %s on commit drop as
        select l.* from %s l where %s and not exists (select from %s s where %s and %s)',
      r.deletes, r.deletes, r.live, r.tenant_pred, r.store, r.members,
      (select string_agg(format('l.%s = %s', c, e), ' and ')
         from unnest(r.cols, r.exprs) x(c, e) where c = any (r.pk)));
    get diagnostics v_del = row_count;
    -- Its size known, the delete joins it with the tenant's rows the right way round.
    execute format('analyze %s', r.deletes);
  end if;
  return query select v_ins, v_upd, v_del, v_rows - v_ins - v_upd, v_conf;
end
$$;

-- Overwrite, step 1: deletes the tenant's rows that table_diff found missing from the snapshot.
-- The deleted rows stay in restore_sql.deletes until commit for the foreign-key check.
create function pitr.restore_delete(p_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
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
-- The update of one batch, joining the batch's store rows with the live rows they replace, both
-- fetched by TID scan. Index scans are off here so that the planner cannot drive the join from
-- the tenant's rows by the tenant index: rows written since the last ANALYZE are estimated at one
-- row, and that plan rescanned the batch for each of them (minutes for a 100k-row tenant). The
-- key and tenant are checked again on every row, so a reused TID can never reach another row.
create function pitr.restore_update(p_snapshot_table bigint, p_store tid[], p_live tid[])
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_indexscan = off
set enable_bitmapscan = off set enable_nestloop = off
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v bigint;
begin
  execute format('update %s l set (%s) = row(%s) from %s t where l.ctid = any ($2) and %s and %s',
    r.live, array_to_string(r.upd, ', '),
    (select string_agg('t.' || c, ', ') from unnest(r.upd) c),
    pitr.target_sql(r, '$1'), pitr.join_on(r.pk, 'l', 't'), r.tenant_pred)
  using p_store, p_live;
  get diagnostics v = row_count;
  return v;
end
$$;

create function pitr.restore_write(p_snapshot_table bigint, p_from bigint, p_to bigint)
returns table (updated bigint, inserted bigint)
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_updates tid[];
  v_live tid[];
  v_inserts tid[];
  v_upd bigint := 0;
  v_ins bigint := 0;
begin
  -- The batch goes to each statement as array parameters: EXECUTE ... USING plans with their
  -- values, so the planner knows the batch's size.
  execute format('select array_agg(sctid) filter (where not ins), array_agg(lctid) filter (where not ins),
      array_agg(sctid) filter (where ins) from %s where n >= %s and n < %s', r.writes, p_from, p_to)
  into v_updates, v_live, v_inserts;
  if cardinality(r.upd) > 0 and v_updates is not null then
    v_upd := pitr.restore_update(p_snapshot_table, v_updates, v_live);
  end if;
  if v_inserts is not null then
    execute format('insert into %s (%s) %s select %s from %s t',
      r.live, array_to_string(r.cols, ', '),
      case when r.overriding then 'overriding system value' else '' end,
      (select string_agg('t.' || c, ', ') from unnest(r.cols) c),
      pitr.target_sql(r, '$1'))
    using v_inserts;
    get diagnostics v_ins = row_count;
  end if;
  return query select v_upd, v_ins;
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
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_live text;
  v_expected text;
  v_missing bigint;
begin
  if p_strategy = 'overwrite' then
    v_live := pitr.digest(format('%s l where %s', r.live, r.tenant_pred),
      array(select 'l.' || c from unnest(r.cols) c), r.by_text);
    v_expected := case when r.exact then r.checksum
      else pitr.digest(pitr.target_sql(r) || ' t', array(select 't.' || c from unnest(r.cols) c),
        r.by_text) end;
    return query select v_live = v_expected, v_live, v_expected;
  else
    execute format('select count(*) from %s t where not exists (select from %s l where %s and %s)',
      pitr.target_sql(r), r.live, pitr.join_on(r.pk, 'l', 't'), r.tenant_pred)
    into v_missing;
    return query select v_missing = 0, (v_missing || ' missing')::text, '0 missing'::text;
  end if;
end
$$;

-- One foreign key as fk_edges shows it. Catalog lookups keep nested loops on, whatever the
-- caller set for its own joins (without them a lookup hashed pg_attribute once per key).
create function pitr.fk_edge(p_fk oid) returns pitr.fk_edges
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
  select x from pitr.fk_edges x where x.constraint_oid = p_fk
$$;

-- Foreign-key checks. Triggers (the FK ones included) are off during a restore so that the
-- application's triggers never touch restored rows; these queries check the same integrity for
-- the rows the restore wrote or deleted, before commit. Rows it did not touch were checked by
-- the FK triggers when they were written.
create function pitr.fk_condition(p_fk oid, p_child text, p_parent text,
  out not_null text, out joined text)
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
  select string_agg(format('%s.%I is not null', p_child, c), ' and '),
    string_agg(format('%s.%I = %s.%I', p_child, c, p_parent, p), ' and ')
  from pitr.fk_edges e, unnest(e.child_columns, e.parent_columns) x(c, p)
  where e.constraint_oid = p_fk
$$;

-- Rows the restore wrote into a child table that point at no parent row. When the parent table
-- is overwritten too (p_parent_snapshot_table, passed once its rows are verified equal to the
-- snapshot's), a row pointing at one of the snapshot's parent rows is satisfied, so only the
-- others are looked up in the whole parent table, which holds every tenant's rows.
create function pitr.fk_dangling_children(p_fk oid, p_snapshot_table bigint,
  p_parent_snapshot_table bigint default null) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  e record := pitr.fk_edge(p_fk);
  f record := pitr.fk_condition(p_fk, 't', 'p');
  v_keys text := (select string_agg(format('t.%I', c), ', ') from unnest(e.child_columns) c);
  v_parent_keys text := (select string_agg(format('p.%I', c), ', ') from unnest(e.parent_columns) c);
  v_left text;
  v bigint;
begin
  -- The keys the written rows point at, once each (a join with the write set, not a TID list:
  -- it can hold every row of the tenant).
  v_left := format('select distinct %s from (select s.* from %s s join %s w on w.sctid = s.ctid
      where %s) t where %s', v_keys, r.store, r.writes, r.members, f.not_null);
  if p_parent_snapshot_table is not null then
    v_left := format('select %s from (%s) t except select %s from %s p',
      v_keys, v_left, v_parent_keys, pitr.target_sql(pitr.restore_sql(p_parent_snapshot_table)));
  end if;
  -- The keys left (usually none, or few) are looked up by the parent's key index: with nested
  -- loops back on for this one statement (the SET clause restores the setting on return), it
  -- does not hash the whole parent table, every tenant's rows.
  execute format('drop table if exists pg_temp.pitr_fk_keys;
      create temp table pitr_fk_keys on commit drop as %s; analyze pg_temp.pitr_fk_keys', v_left);
  perform set_config('enable_nestloop', 'on', true);
  execute format('select count(*) from pg_temp.pitr_fk_keys t where not exists (select from %I.%I p where %s)',
    e.parent_schema, e.parent_table, f.joined) into v;
  return v;
end
$$;

-- Rows of any tenant in a child table that pointed at rows the restore deleted from its parent,
-- and whose parent key is not there any more. Nested loops stay on here: the deleted rows are
-- few and analysed, and probing the child's FK index for each beats hashing the whole child
-- table, every tenant's rows.
create function pitr.fk_orphans_of_deleted(p_fk oid, p_parent_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_parent_snapshot_table);
  e record := pitr.fk_edge(p_fk);
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
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_child_snapshot_table);
  e record := pitr.fk_edge(p_fk);
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
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_parent_snapshot_table);
  e record := pitr.fk_edge(p_fk);
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
  if to_regclass(format('pitr_store.%I', v_st.store_table)) is null then
    return query select 'checksum', false, 'error', format('the stored rows of %s are missing', v_name);
    return;
  end if;
  -- A restore skips this pass: it compares what it wrote with the recorded checksum instead.
  v_digest := case when p_checksum then pitr.digest(
      format('pitr_store.%I s where %s', v_st.store_table, pitr.members(v_st.tenant_id, v_st.seq)),
      array(select format('s.%I', c ->> 'name') from jsonb_array_elements(v_st.columns) c),
      (select hash_by_text from public.backup_stores where id = v_st.store_id))
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
      execute format('select count(*) from pitr_store.%I s where %s and s.%I is not null',
        v_st.store_table, pitr.members(v_st.tenant_id, v_st.seq), v_col.name)
      into v_bad;
      return query select 'columns', v_bad = 0, case when v_bad = 0 then 'warning' else 'error' end,
        format('column %s.%s was dropped since the snapshot%s', v_name, v_col.name,
          case when v_bad = 0 then ' (it held only NULLs)'
            else format('; %s rows hold values that would be lost', v_bad) end);
    elsif v_col.new_type <> v_col.old_type then
      begin
        -- A value survives the new type when it casts there and back unchanged.
        execute format('select count(*) from pitr_store.%I s where %s and s.%I::%s::%s is distinct from s.%I',
          v_st.store_table, pitr.members(v_st.tenant_id, v_st.seq), v_col.name, v_col.new_type,
          v_col.old_type, v_col.name)
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
