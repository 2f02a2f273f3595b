-- A restore's fixed cost for each table it leaves as it is. A restore of ten rows changed in one
-- table of a tenant's thirty (1,000 rows a table, PostgreSQL 15) took 0.9-1.2 s, about 30 ms a
-- table, nearly all of it in the 29 tables where the diff found nothing to write or delete: the
-- undo made a temporary table of the versions it moved and rebuilt the write set with its index
-- and statistics, the verification a temporary table of the keys touched with its statistics,
-- every one of them empty; and each table's diff planned pitr.fk_child_columns again. The undo
-- and the verification now ask first whether the table's write set or delete set holds a row,
-- and when neither does go straight to what the full path computes from empty sets (the head's
-- count and sum). apply.ts no longer calls, for such tables, the functions that read only those
-- sets (the deletes, sequences, deferred keys and the foreign-key checks of their side).

-- pitr.undo_from_diff (20261129000200_tid_fetch_without_tenant_index.sql): with nothing written
-- or deleted the undo's table is the head as it is; everything else as it was.
create or replace function pitr.undo_from_diff(p_undo uuid, p_position integer, p_snapshot_table bigint)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off set jit = off
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_st pitr.backup_snapshot_tables := (select x from pitr.backup_snapshot_tables x
    where x.id = p_snapshot_table);
  v_store pitr.backup_stores := (select x from pitr.backup_stores x where x.id = v_st.store_id);
  v_undo public.backup_snapshots := (select x from public.backup_snapshots x where x.id = p_undo);
  v_changed text := format('(select pitr_ltoid as toid, pitr_lctid as tid from %s
      union all select ltoid, lctid from %s where not ins)', r.deletes, r.writes);
  v_added_n bigint;
  v_added_s numeric;
  v_closed_n bigint;
  v_closed_s numeric;
  v_head pitr.backup_store_heads;
  v_id bigint;
  v_none boolean;
begin
  execute format('select not exists (select from %s w) and not exists (select from %s d)',
    r.writes, r.deletes) into v_none;
  if v_none then
    -- Nothing written or deleted in this table: no version to add or close, and the write set
    -- stays as it is (empty).
    v_added_n := 0; v_added_s := 0; v_closed_n := 0; v_closed_s := 0;
  else
    execute format('drop table if exists pg_temp.pitr_moved; create temp table pitr_moved on commit drop as
        with added as (
          insert into %1$s (%2$s, pitr_tenant, pitr_from, pitr_hash)
          select %3$s, %4$L, %5$s, %6$s from %7$s l
          where l.ctid = any (array(select tid from %8$s c)) and (l.tableoid, l.ctid) in
            (select toid, tid from %8$s c) and (%9$s) is true
          returning pitr_hash),
        closed as (
          update %1$s s set pitr_to = %5$s from %10$s w
          where s.ctid = any (array(select sctid from %10$s)) and s.ctid = w.sctid
          returning w.n, s.ctid as new_ctid, s.pitr_hash)
        select n, new_ctid, pitr_hash, false as added from closed
        union all select null, null, pitr_hash, true from added',
      r.store, array_to_string(r.cols, ', '), array_to_string(r.live_exprs, ', '),
      v_st.store_tenant, v_undo.seq, pitr.row_hash_sql(r.live_exprs, r.by_text), r.live,
      v_changed, r.tenant_pred, r.writes);
    select count(*) filter (where added), coalesce(sum(pitr_hash::numeric) filter (where added), 0),
      count(*) filter (where not added), coalesce(sum(pitr_hash::numeric) filter (where not added), 0)
    into v_added_n, v_added_s, v_closed_n, v_closed_s
    from pg_temp.pitr_moved;
    -- The write set follows the versions to where the update moved them: built again in one pass,
    -- which costs a fraction of updating every one of its rows.
    execute format('create temp table pitr_rewritten on commit drop as
        select w.n, coalesce(m.new_ctid, w.sctid) as sctid, w.ltoid, w.lctid, w.ins, w.reins, w.lhash,
          w.keys_kept
        from %1$s w left join pg_temp.pitr_moved m on m.n = w.n;
      drop table %1$s;
      alter table pg_temp.pitr_rewritten rename to %2$I;
      create index on %1$s (n);
      analyze %1$s;
      drop table pg_temp.pitr_moved', r.writes, 'pitr_write_' || p_snapshot_table);
  end if;
  update pitr.backup_store_heads h
  set row_count = h.row_count + v_added_n - v_closed_n,
    hash_sum = h.hash_sum + v_added_s - v_closed_s, head_seq = v_undo.seq
  where h.store_id = v_st.store_id and h.tenant_id = v_st.store_tenant
  returning * into v_head;
  insert into pitr.backup_snapshot_tables (snapshot_id, tenant_id, store_tenant, position,
    table_schema, table_name, tenant_column, store_id, store_table, seq, columns, primary_key,
    row_count, checksum)
  values (p_undo, v_undo.tenant_id, v_st.store_tenant, p_position, v_st.table_schema,
    v_st.table_name, v_st.tenant_column, v_st.store_id, v_st.store_table, v_undo.seq,
    v_store.columns, pitr.primary_key_of(r.relid), v_head.row_count,
    v_head.row_count || ':' || v_head.hash_sum)
  returning id into v_id;
  return v_id;
end
$$;

-- pitr.verify_written (20261129000200_tid_fetch_without_tenant_index.sql): with nothing written or
-- deleted the live digest is the head's count and sum (the undo's table: the rows as they were,
-- none changed); everything else as it was.
create or replace function pitr.verify_written(p_snapshot_table bigint)
returns table (ok boolean, live_digest text, expected_digest text)
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB'
set enable_nestloop = on set enable_hashjoin = off set enable_mergejoin = off set jit = off
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_st pitr.backup_snapshot_tables := (select x from pitr.backup_snapshot_tables x
    where x.id = p_snapshot_table);
  v_head pitr.backup_store_heads := (select h from pitr.backup_store_heads h
    where h.store_id = v_st.store_id and h.tenant_id = v_st.store_tenant);
  v_hash text := pitr.row_hash_sql(r.live_exprs, r.by_text);
  v_keys text := array_to_string(r.pk, ', ');
  v_deletes text := case when to_regclass(r.deletes) is null then
    format('(select l.* from %s l where false)', r.live) else r.deletes end;
  v_touched bigint;
  v_n bigint;
  v_s numeric;
  v_live text;
  v_none boolean;
begin
  execute format('select not exists (select from %s w) and not exists (select from %s d)',
    r.writes, v_deletes) into v_none;
  if v_none then
    -- Nothing written or deleted: the sum below with no row removed and none added, without the
    -- temporary table of touched keys and its statistics.
    v_live := v_head.row_count || ':' || v_head.hash_sum;
    return query select v_live = r.checksum, v_live, r.checksum;
    return;
  end if;
  -- Every key the restore wrote or deleted, once each.
  execute format('drop table if exists pg_temp.pitr_touched;
      create temp table pitr_touched on commit drop as
        select %1$s from %2$s t union select %1$s from %3$s;
      analyze pg_temp.pitr_touched', v_keys, pitr.written_sql(r), v_deletes);
  execute 'select count(*) from pg_temp.pitr_touched' into v_touched;
  if v_touched * 5 > greatest(v_head.row_count, v_st.row_count) then
    -- Most of the table was written: one pass over all of it is cheaper than a probe per key.
    v_live := pitr.digest(format('%s l where %s', r.live, r.tenant_pred), r.live_exprs, r.by_text);
    return query select v_live = r.checksum, v_live, r.checksum;
    return;
  end if;
  -- Each touched key is looked up by the live table's key index (nested loops only: the
  -- statistics of rows written in this transaction are not known yet).
  execute format('with removed as (
        select %1$s as h from %2$s l
        union all select lhash from %3$s where not ins),
      now as (
        select %1$s as h from pg_temp.pitr_touched k join %4$s l on %5$s where (%6$s) is true)
      select %7$s - (select count(*) from removed) + (select count(*) from now),
        %8$s - (select coalesce(sum(h::numeric), 0) from removed)
          + (select coalesce(sum(h::numeric), 0) from now)',
    v_hash, v_deletes, r.writes, r.live, pitr.join_on(r.pk, 'k', 'l'), r.tenant_pred,
    v_head.row_count, v_head.hash_sum)
  into v_n, v_s;
  v_live := v_n || ':' || v_s;
  return query select v_live = r.checksum, v_live, r.checksum;
end
$$;

-- pitr.fk_child_columns (20261129000000_diff_since_snapshot.sql) as PL/pgSQL, as the lookups of
-- 20261129001700_catalog_lookups_planned_once.sql: a SQL function with SET clauses is planned
-- again at every call, about 1 ms for this one (its view reads six catalogs), and pitr.table_diff
-- calls it once for every table of every plan and restore. The same query.
create or replace function pitr.fk_child_columns(p_relid oid) returns text[]
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on set jit = off
as $$
begin
  return (select coalesce(array_agg(distinct format('%I', c)), '{}') from pitr.fk_edges e,
    unnest(e.child_columns) c where e.child_relid = p_relid);
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
