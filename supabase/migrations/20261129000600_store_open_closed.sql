-- A tenant's lookups in a store read what they need and no more of its history (issue 13). The
-- one btree on (pitr_tenant, pitr_from) (20261128231000_store_lookup.sql) held every version a
-- tenant ever had: a snapshot's members (pitr.members: pitr_from <= s and (pitr_to is null or
-- pitr_to > s)) were found among all of them, and the closed versions that every retained
-- snapshot keeps were read and filtered out by every plan, restore and validate. The cost of a
-- restore grew with the tenant's history: a 0.1% drift restore of 111,000 rows took 161 ms, and
-- 301 ms after eight rounds of 20% drift with their snapshots kept (its diff 118 -> 251 ms;
-- embedded PostgreSQL 17, bench/restore.bench.ts's data).
--
-- Two partial btrees instead: the open versions by (pitr_tenant, pitr_from), the closed ones by
-- (pitr_tenant, pitr_to). A snapshot's members are a BitmapOr of the tenant's open versions and
-- the versions closed after it, so the latest snapshot reads its rows alone, and an older one
-- also reads what changed since it; a new snapshot compares with the open versions alone, and
-- dropping one reads the closed versions alone.
--
-- The price: closing a version (an UPDATE of pitr_to, once per changed row) moves it from one
-- index to the other, an index insert instead of a HOT update. Where it lands is unchanged: a
-- version stays on its page when the page has room (fillfactor 90), HOT or not (30,000 closes of
-- 100,000 rows: the same 10,171 stayed on their page either way, PostgreSQL 15). A first snapshot
-- writes one index entry per row, as before. Until (auto)vacuum passes, the open index keeps a dead
-- entry for each version closed since, which a read visits and skips: history since the last
-- vacuum, where the old index kept all retained history for good. With these indexes the same
-- 0.1% drift restore took 160 ms in the same state; 5% drift restores took 451 ms while the dead
-- entries of a dozen rounds with no vacuum piled up, and 323 ms with the store vacuumed.

create or replace function pitr.store_for(p_relid oid) returns pitr.backup_stores
language plpgsql set search_path = pg_catalog, pg_temp set jit = off as $$
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
  -- A tenant's open versions by where they begin, and its closed ones by where they end (see the
  -- head of 20261129000600_store_open_closed.sql); fillfactor 90 above leaves room on each page
  -- for closing versions in place. Set at creation, not by ALTER TABLE, which would run capture's
  -- DDL check (pitr.capture_ddl) inside every first snapshot.
  execute format('create index %I on pitr_store.%I (pitr_tenant, pitr_from) where pitr_to is null',
    v_name || '_open', v_name);
  execute format('create index %I on pitr_store.%I (pitr_tenant, pitr_to) where pitr_to is not null',
    v_name || '_closed', v_name);
  insert into pitr.backup_stores (id, table_schema, table_name, columns, store_table, hash_by_text)
  overriding system value
  values (substr(v_name, 2)::bigint, v_schema, v_table, v_cols, v_name,
    pitr.hash_by_text(array(select c ->> 'store' from jsonb_array_elements(v_cols) c)))
  returning * into v_store;
  return v_store;
end
$$;

-- Existing stores: the two indexes, then the old one goes.
do $$
declare
  v record;
begin
  for v in select store_table from pitr.backup_stores loop
    execute format('create index if not exists %I on pitr_store.%I (pitr_tenant, pitr_from)
        where pitr_to is null', v.store_table || '_open', v.store_table);
    execute format('create index if not exists %I on pitr_store.%I (pitr_tenant, pitr_to)
        where pitr_to is not null', v.store_table || '_closed', v.store_table);
    execute format('drop index if exists pitr_store.%I', v.store_table || '_by_tenant');
  end loop;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
