-- A restore's undo snapshot taken from the restore's own diff. When a whole table is overwritten
-- back to the snapshot its head holds (the tenant's latest snapshot of it, or the point-in-time
-- state just built), the rows the restore deletes and updates are exactly the rows that differ
-- from the head's open versions, and the versions it writes back are exactly those that differ
-- from the rows now: the undo snapshot is then those live rows added and those versions closed,
-- with no second pass over the tenant's rows.

create index if not exists backup_store_heads_by_seq on pitr.backup_store_heads (store_id, tenant_id, head_seq);

-- Whether restoring this snapshot table can take its undo from its diff: an overwrite of a table
-- with a primary key, every column as stored (the snapshot's digest applies), to the snapshot its
-- head holds. Anything else (merge, a selective choice, an older snapshot, a changed table, a
-- multiset) snapshots the table first, as before.
create function pitr.undo_applies(p_snapshot_table bigint, p_strategy text) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
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
  return r.exact and cardinality(r.pk) > 0;
exception when sqlstate 'PT422' or sqlstate 'PT404' then
  return false;
end
$$;

-- Records, as table p_position of undo snapshot p_undo, the tenant's rows of one table as they
-- are before the restore writes: call it after table_diff materialized the restore's write and
-- delete sets, before any write, and only where undo_applies. The live rows the restore will
-- delete or update are added as versions of the undo snapshot; the head's versions it writes back
-- are closed at the undo's seq (the write set follows them to where the update moved them).
-- Nested loops stay off: the write set can hold every row of the tenant, and a nested loop
-- between it and the versions closed (neither has statistics) was quadratic.
create function pitr.undo_from_diff(p_undo uuid, p_position integer, p_snapshot_table bigint)
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
  execute format('with added as (
        insert into %1$s (%2$s, pitr_tenant, pitr_from, pitr_hash)
        select %3$s, %4$L, %5$s, %6$s from %7$s l
        where l.ctid = any (array(select tid from %8$s c)) and (l.tableoid, l.ctid) in
          (select toid, tid from %8$s c) and %9$s
        returning pitr_hash),
      closed as (
        update %1$s s set pitr_to = %5$s from %10$s w
        where s.ctid = any (array(select sctid from %10$s)) and s.ctid = w.sctid
        returning w.n, s.ctid as new_ctid, s.pitr_hash),
      moved as (update %10$s w set sctid = c.new_ctid from closed c where w.n = c.n)
      select (select count(*) from added), (select coalesce(sum(pitr_hash::numeric), 0) from added),
        (select count(*) from closed), (select coalesce(sum(pitr_hash::numeric), 0) from closed)',
    r.store, array_to_string(r.cols, ', '), array_to_string(r.live_exprs, ', '),
    v_st.store_tenant, v_undo.seq, pitr.row_hash_sql(r.live_exprs, r.by_text), r.live,
    v_changed, r.tenant_pred, r.writes)
  into v_added_n, v_added_s, v_closed_n, v_closed_s;
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

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
