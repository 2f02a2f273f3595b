-- The FK checks that look for a tenant's parent rows, the restore's (pitr.fk_dangling_children)
-- and the plan's (pitr.fk_missing_parents), look them up by the parent's key index (the one a
-- foreign key requires), one distinct key at a time, however many keys there are. Left to
-- choose, the planner hashed the whole parent table, every tenant's rows, from about 500 keys
-- on; the plan's check always did, with nested loops off. Either way the cost grew with the
-- other tenants. For a 5% drift of 100,000 enrollments, locking 975 users FOR KEY SHARE took
-- 22.7 ms by a hash join over the 100,000 users of ten tenants, and 3.0-3.4 ms by the index; a
-- whole tenant's 9,800 users, 26.9 ms hashed and 23.8 ms by the index (PostgreSQL 15, EXPLAIN
-- ANALYZE). The rest of fk_dangling_children is unchanged.

create or replace function pitr.fk_dangling_children(p_fk oid, p_snapshot_table bigint,
  p_parent_snapshot_table bigint default null) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off
set enable_sort = off set enable_hashjoin = on set enable_mergejoin = on set jit = off as $$
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
      create temp table pitr_fk_keys on commit drop as %s', v_left);
  -- The keys left are looked up one by one in the parent's key index, the one a foreign key
  -- requires: nested loops only for these statements (the SET clause restores the settings on
  -- return). Left to choose, the planner hashed the whole parent table, every tenant's rows, from
  -- about 500 keys on.
  perform set_config('enable_nestloop', 'on', true);
  perform set_config('enable_hashjoin', 'off', true);
  perform set_config('enable_mergejoin', 'off', true);
  execute format('select count(*) from (select from pg_temp.pitr_fk_keys t join %I.%I p on %s
      for key share of p) locked', e.parent_schema, e.parent_table, f.joined);
  execute format('select count(*) from pg_temp.pitr_fk_keys t where not exists (select from %I.%I p where %s)',
    e.parent_schema, e.parent_table, f.joined) into v;
  return v + v_partial;
end
$$;

-- The plan's check that a table restored without its parent table points only at parent rows
-- there now: its distinct keys (hashed, from the tenant's snapshot rows), each looked up.
create or replace function pitr.fk_missing_parents(p_fk oid, p_child_snapshot_table bigint)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = on
set enable_sort = off set enable_hashjoin = off set enable_mergejoin = off set jit = off as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_child_snapshot_table);
  e record := pitr.fk_edge(p_fk);
  f record := pitr.fk_condition(p_fk, 't', 'p');
  v_keys text := (select string_agg(format('t.%I', c), ', ') from unnest(e.child_columns) c);
  v bigint;
begin
  execute format('select coalesce(sum(t.pitr_rows), 0) from (select %s, count(*) as pitr_rows
        from %s t where %s group by %s) t
      where not exists (select from %I.%I p where %s)',
    v_keys, pitr.target_sql(r), f.not_null, v_keys, e.parent_schema, e.parent_table, f.joined)
  into v;
  return v;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
