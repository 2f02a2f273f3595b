-- The FK check of a restore's written rows (pitr.fk_dangling_children), cheaper where it can be:
-- - an updated row whose values in the table's foreign-key columns stayed as they were
--   (keys_kept, see pitr.table_diff) is not checked, as PostgreSQL's own FK triggers skip an
--   UPDATE that leaves the key alone: its parent was there and stays (a parent the restore
--   deletes or re-keys is checked from the parent's side, pitr.fk_orphans_of_deleted);
-- - when most of the tenant's rows were written, the keys are read from the table by the tenant;
-- - the distinct keys are hashed, not sorted (a sort of every key of a whole tenant, twice).
-- A 5% drift of 100,000 enrollments locked 3,000 parent users FOR KEY SHARE where 1,000 rows
-- were inserted (68 ms of a 0.93 s restore); a full restore fetched 100,000 rows from the store
-- by TID once per foreign key (2 × 120 ms), on PostgreSQL 15.

create or replace function pitr.fk_dangling_children(p_fk oid, p_snapshot_table bigint,
  p_parent_snapshot_table bigint default null) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off
set enable_sort = off set jit = off as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  e record := pitr.fk_edge(p_fk);
  f record := pitr.fk_condition(p_fk, 't', 'p');
  v_keys text := (select string_agg(format('t.%I', c), ', ') from unnest(e.child_columns) c);
  v_parent_keys text := (select string_agg(format('p.%I', c), ', ') from unnest(e.parent_columns) c);
  v_rows bigint := (select row_count from pitr.backup_snapshot_tables where id = p_snapshot_table);
  v_count bigint;
  v_written text;
  rp pitr.restore_sql;
  v_left text;
  v_partial bigint := 0;
  v bigint;
begin
  execute format('select count(*) from %s w where not w.keys_kept', r.writes) into v_count;
  if v_count * 3 > v_rows then
    -- Most of the tenant's rows were written (a restore of an emptied tenant): their keys are
    -- read from the table itself, a superset of the rows written (each is there, written and
    -- locked by this transaction), in one scan by the tenant, instead of fetching that many rows
    -- from the store one TID at a time.
    v_written := format('(select * from %s l where %s)', r.live, r.tenant_pred);
  else
    v_written := pitr.target_sql(r,
      format('array(select sctid from %s w where not w.keys_kept)', r.writes));
  end if;
  if e.match_full then
    execute format('select count(*) from %s t where num_nulls(%s) between 1 and %s', v_written,
      v_keys, cardinality(e.child_columns) - 1) into v_partial;
  end if;
  -- The keys the written rows point at, once each (a join with the write set, not a TID list:
  -- it can hold every row of the tenant).
  v_left := format('select distinct %s from %s t where %s', v_keys, v_written, f.not_null);
  if p_parent_snapshot_table is not null then
    rp := pitr.restore_sql(p_parent_snapshot_table);
    v_left := format('%s except select %s from %s p', v_left, v_parent_keys, pitr.written_sql(rp));
  end if;
  execute format('drop table if exists pg_temp.pitr_fk_keys;
      create temp table pitr_fk_keys on commit drop as %s; analyze pg_temp.pitr_fk_keys', v_left);
  -- The keys left (usually none, or few) are looked up by the parent's key index: with nested
  -- loops back on for these statements (the SET clause restores the setting on return), it does
  -- not hash the whole parent table, every tenant's rows.
  perform set_config('enable_nestloop', 'on', true);
  execute format('select count(*) from (select from pg_temp.pitr_fk_keys t join %I.%I p on %s
      for key share of p) locked', e.parent_schema, e.parent_table, f.joined);
  execute format('select count(*) from pg_temp.pitr_fk_keys t where not exists (select from %I.%I p where %s)',
    e.parent_schema, e.parent_table, f.joined) into v;
  return v + v_partial;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
