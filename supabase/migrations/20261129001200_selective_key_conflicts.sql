-- A selective plan foresees collisions on keys on expressions or with a predicate, and on
-- exclusion constraints, too (pitr.plan_key_conflicts of 20261129001000_plan_key_conflicts.sql,
-- which left selective restores out). Its choice was checked against plain unique keys already
-- (pitr.selection_conflicts: selection_incomplete); the others made the restore fail unforeseen.
-- The rows looked up are those the selective restore writes (the plan's write set), among every
-- live row it neither rewrites nor deletes: other tenants' rows and the tenant's rows not chosen.

create or replace function pitr.plan_key_conflicts(p_snapshot_table bigint, p_strategy text)
returns table (constraint_name text, rows bigint)
language plpgsql
set search_path = pg_catalog, pg_temp set enable_nestloop = on set jit = off
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  v_relid oid := (select to_regclass(format('%I.%I', st.table_schema, st.table_name))
    from pitr.backup_snapshot_tables st where st.id = p_snapshot_table);
  r pitr.restore_sql;
  k record;
  v_candidates text;
  v_kept text;
  v_n bigint;
begin
  if not exists (select from pitr.table_keys(v_relid) t where t.kind <> 'p') then
    return;
  end if;
  r := pitr.restore_sql(p_snapshot_table);
  if p_strategy = 'overwrite' then
    v_candidates := pitr.target_sql(r);
    v_kept := format('(%s) is not true', r.tenant_pred);
  elsif p_strategy = 'selective' then
    -- The plan's write set and deletes (pitr.table_diff, materialized for a selective plan).
    if to_regclass(r.writes) is null or cardinality(r.pk) = 0 then
      return;
    end if;
    v_candidates := pitr.written_sql(r);
    v_kept := format('not exists (select from %s w where (w.ltoid, w.lctid) = (l.tableoid, l.ctid))',
      r.writes);
    if to_regclass(r.deletes) is not null then
      v_kept := v_kept || format(' and not exists (select from %s d
          where (d.pitr_ltoid, d.pitr_lctid) = (l.tableoid, l.ctid))', r.deletes);
    end if;
  elsif p_strategy = 'merge' and cardinality(r.pk) > 0 then
    v_candidates := format('(select t.* from %s t where not exists (select from %s l where %s))',
      pitr.target_sql(r), r.live, pitr.join_on(r.pk, 'l', 't'));
    v_kept := 'true';
  else
    return;
  end if;
  for k in
    select * from pitr.table_keys(v_relid) t
    where t.kind <> 'p' and t.columns <@ r.cols
    order by t.name
  loop
    execute format('select count(*) from (select %s from %s x where %s) pitr_c
        where exists (select from %s l where %s and %s and %s)',
      pitr.key_values_sql(k.exprs), v_candidates, coalesce(k.pred, 'true'), r.live,
      coalesce(k.pred, 'true'), pitr.key_match_sql(k.exprs, k.ops, k.nulls_not_distinct), v_kept)
    into v_n;
    if v_n > 0 then
      return query select k.name, v_n;
    end if;
  end loop;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
