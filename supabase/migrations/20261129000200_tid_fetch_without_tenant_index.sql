-- Rows fetched by TID never go through the tenant's index. The statements that fetch a restore's
-- rows by TID (its deletes, the undo's rows, the verification's lookups by key) also check the
-- tenant on every row; with statistics that say the tenant has no rows (taken while it was empty,
-- before a restore filled it), the planner scanned the tenant index instead and tested each of its
-- rows against the whole TID list: 1.3 s to delete 1,000 rows, and 42 s for the verification
-- of a 5% drift (100,000 rows × 5,000 keys), where the TID scan takes milliseconds. Checked as
-- `(predicate) is true`, which no index can answer, the tenant test stays a filter on the rows
-- fetched (found profiling a restore made right after another one, before autovacuum's ANALYZE).
-- The functions are restated whole (CREATE OR REPLACE needs the body); only that test changed.

-- Overwrite, step 1: deletes by TID the rows table_diff found missing from the snapshot
-- (20261128220100_delete_by_tid.sql).
create or replace function pitr.restore_delete(p_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' set jit = off as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_rows bigint;
begin
  execute format('delete from %1$s l using %2$s d
      where l.ctid = any (array(select pitr_lctid from %2$s))
        and l.tableoid = d.pitr_ltoid and l.ctid = d.pitr_lctid and %3$s and (%4$s) is true',
    r.live, r.deletes,
    case when cardinality(r.pk) > 0 then pitr.join_on(r.pk, 'l', 'd') else 'true' end,
    r.tenant_pred);
  get diagnostics v_rows = row_count;
  return v_rows;
end
$$;


-- A restore's undo taken from its own diff (20261128220000_undo_empty.sql).
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
begin
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


-- The verification of an overwrite from what it touched (20261128100300_engine_apply.sql).
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
begin
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


-- Update batches (pitr.restore_update) read their snapshot rows by TID too. Priced at
-- random_page_cost each, 3,000 TIDs cost more than a sequential scan of a small store, and the
-- planner read every version of every tenant in the store to find them: 21 ms of a 5% drift
-- restore of 100,000 rows on PostgreSQL 15 (auto_explain), a cost that grows with the store. With
-- sequential scans off it fetches them by TID (the write phase: 59 ms to 45 ms, median of 5), as
-- restore_write's inserts already do; index and bitmap scans were already off there.
alter function pitr.restore_update(bigint, tid[], tid[]) set enable_seqscan = off;


revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
