-- The undo snapshot of a restore, cheaper where it can be: a table the tenant has no row in has an
-- empty undo with no pass over anything (pitr.undo_empty), and the undo taken from the restore's
-- diff no longer updates every row of the write set to follow the versions it closes: the write set
-- is built again in one pass (an UPDATE of a 500k-row write set took 5 s; the rebuild a fraction).

-- Records, as table p_position of undo snapshot p_undo, the tenant's rows of one table as they
-- are before the restore writes: call it after table_diff materialized the restore's write and
-- delete sets, before any write, and only where undo_applies. The live rows the restore will
-- delete or update are added as versions of the undo snapshot; the head's versions it writes back
-- are closed at the undo's seq (the write set follows them to where the update moved them).
-- Nested loops stay off: the write set can hold every row of the tenant, and a nested loop
-- between it and the versions closed (neither has statistics) was quadratic.
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
          (select toid, tid from %8$s c) and %9$s
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
      select w.n, coalesce(m.new_ctid, w.sctid) as sctid, w.ltoid, w.lctid, w.ins, w.reins, w.lhash
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

-- A table the tenant has no row in now (a restore of an emptied tenant) has an empty undo: a
-- snapshot table of no rows under a store tenant of its own (nothing to store, nothing to close;
-- the head keeps the snapshot it holds, which the restore brings back).
create function pitr.undo_empty(p_undo uuid, p_position integer, p_snapshot_table bigint)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_st pitr.backup_snapshot_tables := (select x from pitr.backup_snapshot_tables x
    where x.id = p_snapshot_table);
  v_undo public.backup_snapshots := (select x from public.backup_snapshots x where x.id = p_undo);
  v_id bigint;
begin
  insert into pitr.backup_snapshot_tables (snapshot_id, tenant_id, store_tenant, position,
    table_schema, table_name, tenant_column, store_id, store_table, seq, columns, primary_key,
    row_count, checksum)
  values (p_undo, v_undo.tenant_id, 'undo:' || p_undo, p_position, v_st.table_schema,
    v_st.table_name, v_st.tenant_column, v_st.store_id, v_st.store_table, v_undo.seq,
    (select columns from pitr.backup_stores where id = v_st.store_id),
    coalesce(pitr.primary_key_of(r.relid), '{}'), 0, '0:0')
  returning id into v_id;
  return v_id;
end
$$;

-- Whether the tenant has no row in the snapshot table's live table now.
create function pitr.tenant_has_rows(p_snapshot_table bigint) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v boolean;
begin
  execute format('select exists (select from %s l where %s)', r.live, r.tenant_pred) into v;
  return v;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
