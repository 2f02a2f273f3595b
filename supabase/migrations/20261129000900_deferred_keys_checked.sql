-- Deferrable keys are checked by the restore itself. A primary key, unique or exclusion
-- constraint declared DEFERRABLE is not enforced by its index: the index takes a colliding entry
-- and an internal trigger (unique_key_recheck) raises at the end of the statement or at commit.
-- A restore writes with session_replication_role = replica so that the application's triggers
-- leave restored rows alone, and that trigger is off with them: a restored row colliding with
-- another tenant's row, or with a row a merge keeps, committed (tests/constraints.test.ts).
-- Immediate keys need nothing: their index raises at once.

-- For one restored table, the first of its deferrable keys (by name) that a row the restore
-- wrote collides under, and how many written rows collide. The rows are the live rows the
-- restore wrote, found by the primary key of its write set (a table without one: every row of
-- the tenant, a superset; a collision among rows it did not write could not have committed
-- either). Each is looked up through the key's own index with the key's own operators (the
-- btree equality of each column's operator class; an exclusion constraint's operators, and its
-- predicate), at most two matches, and collides when another row than itself matches: a row
-- matches itself unless a key column is null (or, for an exclusion, the operator is false on it,
-- as && on an empty range). NULLS NOT DISTINCT keys match nulls too. Nothing is read for a table
-- without a deferrable key, or when the restore wrote none of its rows.
create function pitr.deferred_key_conflicts(p_snapshot_table bigint)
returns table (constraint_name text, rows bigint)
language plpgsql set search_path = pg_catalog, pg_temp set enable_nestloop = on set jit = off as $$
declare
  v_relid oid := (select to_regclass(format('%I.%I', st.table_schema, st.table_name))
    from pitr.backup_snapshot_tables st where st.id = p_snapshot_table);
  r pitr.restore_sql;
  k record;
  v_written boolean;
  v_candidates text;
  v_exprs text[];
  v_ops text[];
  v_match text;
  v_self text;
  v_n bigint;
begin
  if not exists (select from pg_constraint c where c.conrelid = v_relid
      and c.contype in ('p', 'u', 'x') and c.condeferrable) then
    return;
  end if;
  r := pitr.restore_sql(p_snapshot_table);
  execute format('select exists (select from %s)', r.writes) into v_written;
  if not v_written then
    return;
  end if;
  if cardinality(r.pk) > 0 then
    v_candidates := format('(select l.* from %s l where %s and (%s) in (select %s from %s w))',
      r.live, r.tenant_pred, array_to_string(array(select 'l.' || c from unnest(r.pk) c), ', '),
      array_to_string(array(select 'w.' || c from unnest(r.pk) c), ', '), pitr.written_sql(r));
  else
    v_candidates := format('(select l.* from %s l where %s)', r.live, r.tenant_pred);
  end if;
  for k in
    select c.conname::text as name, c.contype, c.conexclop, i.indexrelid, i.indnkeyatts,
      i.indclass, i.indnullsnotdistinct, pg_get_expr(i.indpred, i.indrelid) as pred
    from pg_constraint c join pg_index i on i.indexrelid = c.conindid
    where c.conrelid = v_relid and c.contype in ('p', 'u', 'x') and c.condeferrable
    order by c.conname
  loop
    v_exprs := array(select '(' || pg_get_indexdef(k.indexrelid, n, false) || ')'
      from generate_series(1, k.indnkeyatts) n order by n);
    if k.contype = 'x' then
      v_ops := array(select format('operator(%I.%s)', ns.nspname, o.oprname)
        from unnest(k.conexclop) with ordinality x(op, n)
        join pg_operator o on o.oid = x.op join pg_namespace ns on ns.oid = o.oprnamespace
        order by x.n);
    else
      v_ops := array(select (select format('operator(%I.%s)', ns.nspname, o.oprname)
          from pg_opclass oc
          join pg_amop a on a.amopfamily = oc.opcfamily and a.amoplefttype = oc.opcintype
            and a.amoprighttype = oc.opcintype and a.amopstrategy = 3
          join pg_am am on am.oid = a.amopmethod and am.amname = 'btree'
          join pg_operator o on o.oid = a.amopopr join pg_namespace ns on ns.oid = o.oprnamespace
          where oc.oid = k.indclass[n - 1])
        from generate_series(1, k.indnkeyatts) n order by n);
    end if;
    -- Unqualified, the key's expressions name the columns of the one relation in their FROM:
    -- the candidate row (x) where its keys are computed, the table where they are looked up.
    v_match := (select string_agg(case when k.indnullsnotdistinct
        then format('(%s %s pitr_c.pitr_k%s or (%s is null and pitr_c.pitr_k%s is null))', e, op, n, e, n)
        else format('%s %s pitr_c.pitr_k%s', e, op, n) end, ' and ')
      from unnest(v_exprs, v_ops) with ordinality x(e, op, n));
    v_self := (select string_agg(case when k.indnullsnotdistinct
        then format('(pitr_c.pitr_k%s %s pitr_c.pitr_k%s or pitr_c.pitr_k%s is null)', n, op, n, n)
        else format('pitr_c.pitr_k%s %s pitr_c.pitr_k%s', n, op, n) end, ' and ')
      from unnest(v_ops) with ordinality x(op, n));
    execute format('select count(*) from (select %s from %s x where %s) pitr_c
        where (select count(*) from (select from %s where %s and %s limit 2) m)
          > case when %s then 1 else 0 end',
      (select string_agg(format('%s as pitr_k%s', e, n), ', ')
       from unnest(v_exprs) with ordinality x(e, n)),
      v_candidates, coalesce(k.pred, 'true'), r.live, coalesce(k.pred, 'true'), v_match, v_self)
    into v_n;
    if v_n > 0 then
      return query select k.name, v_n;
      return;
    end if;
  end loop;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
