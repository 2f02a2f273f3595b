-- Store lookups independent of the fleet (issue 12). Every lookup of a store names one tenant:
-- a snapshot reads the tenant's open versions (pitr_tenant = t and pitr_to is null), plan,
-- restore, validate and undo read one snapshot's members (pitr_tenant = t and pitr_from <= s and
-- (pitr_to is null or pitr_to > s)), dropping a snapshot reads its closed versions (pitr_to is
-- not null). The BRIN index on (pitr_tenant, pitr_from) found them only while one tenant's rows
-- sat together: once rounds of incremental snapshots interleave thousands of tenants, every
-- block range spans hundreds of tenants' ids, the planner never picks it and a lookup read every
-- tenant's history (issue 12: a 5% restore of one tenant 2x slower beside 1,000 others).
-- A btree on (pitr_tenant, pitr_from) answers all three from the tenant's own entries (a
-- snapshot's members as an index range, the open and closed versions as the tenant's entries
-- filtered), and leaves pitr_to out of every index, so that closing a version (an UPDATE of
-- pitr_to alone) is a HOT update that keeps it on its page: with fillfactor 90 the page has the
-- room. Measured with bench/fleet.bench.ts (2,000 tenants, 30 rounds): with the btree on
-- (pitr_tenant, pitr_to) instead, every close moved the version to another page (0 of 691,669
-- updates HOT), and the subject's 8,900 members of one snapshot lay on 4,626 pages of the fleet's
-- store against 478 alone (36 ms against 4 ms to read them). The btree costs a snapshot's inserts
-- more than BRIN did (100k rows: 0.19 s bare, 0.24 s BRIN, 0.30 s btree, measured for
-- 20261128100200), a price paid once per changed row; BRIN is dropped, as no plan used it.

create or replace function pitr.store_for(p_relid oid) returns pitr.backup_stores
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
      pitr_from bigint not null, pitr_to bigint, pitr_hash bigint not null)
      with (fillfactor = 90)',
    v_name, (select string_agg(format('%I %s', c ->> 'name', c ->> 'store'), ', ')
      from jsonb_array_elements(v_cols) c));
  perform pitr.make_private(format('pitr_store.%I', v_name)::regclass);
  -- The tenant's versions by where they begin (and fillfactor 90 above: room on each page for
  -- closing its versions in place, see the head of this file). Set at creation, not by ALTER
  -- TABLE, which would run capture's DDL check (pitr.capture_ddl) inside every first snapshot.
  execute format('create index %I on pitr_store.%I (pitr_tenant, pitr_from)',
    v_name || '_by_tenant', v_name);
  insert into pitr.backup_stores (id, table_schema, table_name, columns, store_table, hash_by_text)
  overriding system value
  values (substr(v_name, 2)::bigint, v_schema, v_table, v_cols, v_name,
    pitr.hash_by_text(array(select c ->> 'store' from jsonb_array_elements(v_cols) c)))
  returning * into v_store;
  return v_store;
end
$$;


-- Existing stores: the btree and the fillfactor (for the pages written from now on), and the
-- BRIN index goes. (The ALTER TABLE runs capture's DDL check once: it records only a captured
-- table's change that no event trigger saw, at this time, so moments before it stay refused.)
do $$
declare
  v record;
begin
  for v in select store_table from pitr.backup_stores loop
    execute format('alter table pitr_store.%I set (fillfactor = 90)', v.store_table);
    execute format('create index if not exists %I on pitr_store.%I (pitr_tenant, pitr_from)',
      v.store_table || '_by_tenant', v.store_table);
  end loop;
  for v in
    select i.indexrelid::regclass as idx
    from pg_index i join pg_class c on c.oid = i.indexrelid join pg_am a on a.oid = c.relam
    join pg_class t on t.oid = i.indrelid join pg_namespace n on n.oid = t.relnamespace
    where n.nspname = 'pitr_store' and a.amname = 'brin'
  loop
    execute format('drop index %s', v.idx);
  end loop;
end
$$;

-- Dropping a snapshot keeps a closed version while any snapshot of its tenant covers it: that
-- lookup (pitr.drop_snapshot) reads the tenant's snapshot tables of one store, by seq.
create index if not exists backup_snapshot_tables_by_store on pitr.backup_snapshot_tables
  (store_id, store_tenant, seq);

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
