-- A plan of a partial restore counts the rows of a child table outside it that point at keys the
-- restore takes away (pitr.fk_children_of_deleted). The keys taken away (the tenant's keys now
-- that the snapshot lacks) were a CTE the planner estimated as the tenant's whole table, so it
-- joined them with the child by a hash over every tenant's child rows: for ten keys added since,
-- a scan of all 3,000 campaigns beside the tenant's 1,000 (PostgreSQL 15, auto_explain), growing
-- with the fleet. The keys now go first into a temporary table of known size: none, and the child
-- is not read; a few, and it is read by its key index where it has one.

create or replace function pitr.fk_children_of_deleted(p_fk oid, p_parent_snapshot_table bigint)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' set jit = off as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_parent_snapshot_table);
  e record := pitr.fk_edge(p_fk);
  f record := pitr.fk_condition(p_fk, 'c', 'g');
  v_live_keys text := (select string_agg(format('l.%I', c), ', ') from unnest(e.parent_columns) c);
  v_target_keys text := (select string_agg(format('t.%I', c), ', ') from unnest(e.parent_columns) c);
  v_not_null text := (select string_agg(format('l.%I is not null', c), ' and ')
    from unnest(e.parent_columns) c);
  v_gone bigint;
  v bigint;
begin
  execute 'drop table if exists pg_temp.pitr_gone';
  execute format('create temp table pitr_gone on commit drop as
      select %s from %s l where %s and %s except select %s from %s t',
    v_live_keys, r.live, r.tenant_pred, v_not_null, v_target_keys, pitr.target_sql(r));
  get diagnostics v_gone = row_count;
  if v_gone = 0 then
    return 0;
  end if;
  analyze pg_temp.pitr_gone;
  execute format('select count(*) from pg_temp.pitr_gone g join %I.%I c on %s',
    e.child_schema, e.child_table, f.joined) into v;
  return v;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
