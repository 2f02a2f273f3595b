-- Snapshot storage and checksums: the typed stores in pitr_store, the per-tenant heads, the
-- order-independent digest. Functions run with a fixed search_path and fixed output settings, so
-- a row's text (hashed for the few types without a hash function) is the same in every session.

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
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
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
create function pitr.store_for(p_relid oid) returns pitr.backup_stores
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_schema text;
  v_table text;
  v_cols jsonb;
  v_store pitr.backup_stores;
  v_name text;
begin
  select n.nspname, c.relname into v_schema, v_table
  from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = p_relid;
  -- type: the live column's type when the store was made; store: the type the store keeps it in.
  select jsonb_agg(jsonb_build_object('name', c.name, 'type', c.type, 'store', c.store_type))
  into v_cols
  from pitr.live_columns(p_relid) c where not c.is_generated;
  select * into v_store from pitr.backup_stores
  where table_schema = v_schema and table_name = v_table and columns = v_cols;
  if found then
    return v_store;
  end if;
  -- Serialise the creation of a table's store between concurrent snapshots.
  perform pg_advisory_xact_lock(hashtext('pitr:store'), p_relid::int4);
  select * into v_store from pitr.backup_stores
  where table_schema = v_schema and table_name = v_table and columns = v_cols;
  if found then
    return v_store;
  end if;
  v_name := 's' || nextval(pg_get_serial_sequence('pitr.backup_stores', 'id'));
  execute format('create table pitr_store.%I (%s, pitr_tenant text not null,
      pitr_from bigint not null, pitr_to bigint, pitr_hash bigint not null)',
    v_name, (select string_agg(format('%I %s', c ->> 'name', c ->> 'store'), ', ')
      from jsonb_array_elements(v_cols) c));
  perform pitr.make_private(format('pitr_store.%I', v_name)::regclass);
  -- BRIN, not btree: a snapshot appends a tenant's rows together, so block ranges find them,
  -- and keeping a btree entry per row cost as much as writing the rows (measured: 100k rows
  -- inserted in 0.19 s with no index, 0.24 s with BRIN, 0.30-0.35 s with a btree).
  execute format('create index on pitr_store.%I using brin (pitr_tenant, pitr_from)
      with (autosummarize = on)', v_name);
  insert into pitr.backup_stores (id, table_schema, table_name, columns, store_table, hash_by_text)
  overriding system value
  values (substr(v_name, 2)::bigint, v_schema, v_table, v_cols, v_name,
    pitr.hash_by_text(array(select c ->> 'store' from jsonb_array_elements(v_cols) c)))
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
-- query built by the engine (never caller text) yielding the live table's columns on alias l;
-- they are converted to the store's types here, under the pinned output settings. Versions equal
-- to a row (by key and binary image) stay open; the others are closed at p_seq, and the rows
-- without an equal open version are added. A table without a primary key is a multiset: a row
-- is matched with the open version of the same hash and the same number among the rows of that
-- hash in binary-image order, so identical rows pair up one for one. Returns the snapshot's row
-- count and checksum, kept per tenant in backup_store_heads so that they follow from the changes
-- alone.
create function pitr.store_rows(p_store_id bigint, p_tenant text, p_seq bigint, p_pk text[],
  p_source text, out stored_rows bigint, out stored_checksum text)
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  st pitr.backup_stores := (select x from pitr.backup_stores x where x.id = p_store_id);
  v_cols text[] := array(select format('%I', c ->> 'name') from jsonb_array_elements(st.columns) c);
  v_list text := array_to_string(v_cols, ', ');
  v_l text := (select string_agg('l.' || c, ', ') from unnest(v_cols) c);
  v_v text := (select string_agg('v.' || c, ', ') from unnest(v_cols) c);
  v_d text := (select string_agg('d.' || c, ', ') from unnest(v_cols) c);
  v_pk text[] := array(select format('%I', k) from unnest(p_pk) k);
  v_source text := format('(select %s from %s l)',
    (select string_agg(case when c ->> 'store' = c ->> 'type' then format('l.%I', c ->> 'name')
        else format('l.%I::%s as %I', c ->> 'name', c ->> 'store', c ->> 'name') end, ', ')
      from jsonb_array_elements(st.columns) c),
    p_source);
  v_hash_l text := pitr.row_hash_sql(array(select 'l.' || c from unnest(v_cols) c), st.hash_by_text);
  v_open text := format('(select s.ctid as pitr_vctid, s.* from pitr_store.%I s
    where s.pitr_tenant = %L and s.pitr_to is null)', st.store_table, p_tenant);
  v_changed text;
  v_head pitr.backup_store_heads;
  v_rows bigint;
  v_sum numeric;
begin
  select * into v_head from pitr.backup_store_heads where store_id = p_store_id and tenant_id = p_tenant
  for update;
  if not found then
    execute format('with added as (insert into pitr_store.%I (%s, pitr_tenant, pitr_from, pitr_hash)
        select %s, %L, %s, %s from %s l returning pitr_hash)
      select count(*), coalesce(sum(pitr_hash::numeric), 0) from added',
      st.store_table, v_list, v_l, p_tenant, p_seq, v_hash_l, v_source)
    into v_rows, v_sum;
    insert into pitr.backup_store_heads (store_id, tenant_id, row_count, hash_sum, head_seq)
    values (p_store_id, p_tenant, v_rows, v_sum, p_seq)
    returning * into v_head;
    stored_rows := v_head.row_count;
    stored_checksum := v_head.row_count || ':' || v_head.hash_sum;
    return;
  end if;
  -- The rows that differ from the open versions: pitr_new marks a row to add, pitr_vctid a
  -- version to close (a row and a version paired but unequal are both).
  if cardinality(v_pk) > 0 then
    v_changed := format('select l.*, v.pitr_vctid, l.%1$s is not null as pitr_new
        from %2$s l full join %3$s v on %4$s
        where l.%1$s is null or v.%1$s is null or record_image_ne(row(%5$s), row(%6$s))',
      v_pk[1], v_source, v_open, pitr.join_on(v_pk, 'l', 'v'), v_l, v_v);
  else
    v_changed := format('select l.*, v.pitr_vctid, l.pitr_n is not null as pitr_new
        from (select l.*, row_number() over (partition by l.pitr_h
                order by row(%1$s) using operator(pg_catalog.*<)) as pitr_n
              from (select l.*, %2$s as pitr_h from %3$s l) l) l
        full join (select v.*, row_number() over (partition by v.pitr_hash
                order by row(%4$s) using operator(pg_catalog.*<)) as pitr_n
              from %5$s v) v on l.pitr_h = v.pitr_hash and l.pitr_n = v.pitr_n
        where l.pitr_n is null or v.pitr_n is null or record_image_ne(row(%1$s), row(%4$s))',
      v_l, v_hash_l, v_source, v_v, v_open);
  end if;
  execute format('with d as materialized (%1$s),
      closed as (update pitr_store.%2$I s set pitr_to = %3$s
        where s.ctid = any (array(select pitr_vctid from d where pitr_vctid is not null))
        returning s.pitr_hash),
      added as (insert into pitr_store.%2$I (%4$s, pitr_tenant, pitr_from, pitr_hash)
        select %5$s, %6$L, %3$s, %7$s from d where d.pitr_new returning pitr_hash)
      select (select count(*) from added) - (select count(*) from closed),
        (select coalesce(sum(pitr_hash::numeric), 0) from added)
          - (select coalesce(sum(pitr_hash::numeric), 0) from closed)',
    v_changed, st.store_table, p_seq, v_list, v_d, p_tenant,
    pitr.row_hash_sql(array(select 'd.' || c from unnest(v_cols) c), st.hash_by_text))
  into v_rows, v_sum;
  update pitr.backup_store_heads
  set row_count = row_count + v_rows, hash_sum = hash_sum + v_sum, head_seq = p_seq
  where store_id = p_store_id and tenant_id = p_tenant
  returning * into v_head;
  stored_rows := v_head.row_count;
  stored_checksum := v_head.row_count || ':' || v_head.hash_sum;
end
$$;

-- Records one table's rows of the snapshot's tenant in the table's store (typed, the fastest
-- and smallest of the stores measured), with the columns, key (none: a multiset), row count and
-- checksum.
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
  p_source text, p_store_tenant text default null)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_snap public.backup_snapshots := (select x from public.backup_snapshots x where x.id = p_snapshot);
  v_table record;
  v_pk text[];
  v_store pitr.backup_stores;
  v_id bigint;
  v_stored record;
begin
  select * into v_table from pitr.protected_tables where relid = p_relid;
  v_pk := coalesce(pitr.primary_key_of(p_relid), '{}');
  v_store := pitr.store_for(p_relid);
  v_stored := pitr.store_rows(v_store.id, coalesce(p_store_tenant, v_snap.tenant_id), v_snap.seq,
    v_pk, p_source);
  insert into pitr.backup_snapshot_tables (snapshot_id, tenant_id, store_tenant, position,
    table_schema, table_name, tenant_column, store_id, store_table, seq, columns, primary_key,
    row_count, checksum)
  values (p_snapshot, v_snap.tenant_id, coalesce(p_store_tenant, v_snap.tenant_id), p_position,
    v_table.table_schema, v_table.table_name,
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
  create temp table if not exists pitr_dropped (store_id bigint, store_table text, store_tenant text)
    on commit drop;
  insert into pitr_dropped
  select distinct store_id, store_table, store_tenant from pitr.backup_snapshot_tables
  where snapshot_id = p_snapshot;
  delete from public.backup_snapshots where id = p_snapshot;
  for v_st in select distinct * from pitr_dropped loop
    execute format('delete from pitr_store.%I s where s.pitr_tenant = %L and s.pitr_to is not null
        and not exists (select from pitr.backup_snapshot_tables t where t.store_id = %s
          and t.store_tenant = %L and t.seq >= s.pitr_from and t.seq < s.pitr_to)',
      v_st.store_table, v_st.store_tenant, v_st.store_id, v_st.store_tenant);
  end loop;
  delete from pitr_dropped;
end
$$;
