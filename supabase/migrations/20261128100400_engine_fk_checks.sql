-- Foreign-key checks of a restore and of a partial restore's plan, run inside the restore's
-- transaction before commit (the FK triggers are off with every other trigger).

-- One foreign key as fk_edges shows it. Catalog lookups keep nested loops on, whatever the
-- caller set for its own joins (without them a lookup hashed pg_attribute once per key).
create function pitr.fk_edge(p_fk oid) returns pitr.fk_edges
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
  select x from pitr.fk_edges x where x.constraint_oid = p_fk
$$;

-- Foreign-key checks. Triggers (the FK ones included) are off during a restore so that the
-- application's triggers never touch restored rows; these queries check the same integrity for
-- the rows the restore wrote or deleted, before commit. Rows it did not touch were checked by
-- the FK triggers when they were written.
create function pitr.fk_condition(p_fk oid, p_child text, p_parent text,
  out not_null text, out joined text)
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
  select string_agg(format('%s.%I is not null', p_child, c), ' and '),
    string_agg(format('%s.%I = %s.%I', p_child, c, p_parent, p), ' and ')
  from pitr.fk_edges e, unnest(e.child_columns, e.parent_columns) x(c, p)
  where e.constraint_oid = p_fk
$$;

-- Rows the restore wrote into a child table that point at no parent row. When the parent table
-- is overwritten too (p_parent_snapshot_table, passed once its rows are verified equal to the
-- snapshot's), a row pointing at one of the snapshot's parent rows is satisfied, so only the
-- others are looked up in the whole parent table, which holds every tenant's rows.
create function pitr.fk_dangling_children(p_fk oid, p_snapshot_table bigint,
  p_parent_snapshot_table bigint default null) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  e record := pitr.fk_edge(p_fk);
  f record := pitr.fk_condition(p_fk, 't', 'p');
  v_keys text := (select string_agg(format('t.%I', c), ', ') from unnest(e.child_columns) c);
  v_parent_keys text := (select string_agg(format('p.%I', c), ', ') from unnest(e.parent_columns) c);
  v_left text;
  v bigint;
begin
  -- The keys the written rows point at, once each (a join with the write set, not a TID list:
  -- it can hold every row of the tenant).
  v_left := format('select distinct %s from (select s.* from %s s join %s w on w.sctid = s.ctid
      where %s) t where %s', v_keys, r.store, r.writes, r.members, f.not_null);
  if p_parent_snapshot_table is not null then
    v_left := format('select %s from (%s) t except select %s from %s p',
      v_keys, v_left, v_parent_keys, pitr.target_sql(pitr.restore_sql(p_parent_snapshot_table)));
  end if;
  -- The keys left (usually none, or few) are looked up by the parent's key index: with nested
  -- loops back on for this one statement (the SET clause restores the setting on return), it
  -- does not hash the whole parent table, every tenant's rows.
  execute format('drop table if exists pg_temp.pitr_fk_keys;
      create temp table pitr_fk_keys on commit drop as %s; analyze pg_temp.pitr_fk_keys', v_left);
  perform set_config('enable_nestloop', 'on', true);
  execute format('select count(*) from pg_temp.pitr_fk_keys t where not exists (select from %I.%I p where %s)',
    e.parent_schema, e.parent_table, f.joined) into v;
  return v;
end
$$;

-- Rows of any tenant in a child table that pointed at rows the restore deleted from its parent,
-- and whose parent key is not there any more. Nested loops stay on here: the deleted rows are
-- few and analysed, and probing the child's FK index for each beats hashing the whole child
-- table, every tenant's rows.
create function pitr.fk_orphans_of_deleted(p_fk oid, p_parent_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_parent_snapshot_table);
  e record := pitr.fk_edge(p_fk);
  f record := pitr.fk_condition(p_fk, 'c', 'd');
  g record := pitr.fk_condition(p_fk, 'c', 'p');
  v bigint;
begin
  if to_regclass(r.deletes) is null then
    return 0;
  end if;
  execute format('select count(*) from %I.%I c where exists (select from %s d where %s)
      and not exists (select from %I.%I p where %s)',
    e.child_schema, e.child_table, r.deletes, f.joined, e.parent_schema, e.parent_table, g.joined)
  into v;
  return v;
end
$$;

-- Planning a partial restore: snapshot rows of a restored child table that would point at a
-- parent row missing now in a table outside the restored set.
create function pitr.fk_missing_parents(p_fk oid, p_child_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_child_snapshot_table);
  e record := pitr.fk_edge(p_fk);
  f record := pitr.fk_condition(p_fk, 't', 'p');
  v bigint;
begin
  execute format('select count(*) from %s t where %s and not exists (select from %I.%I p where %s)',
    pitr.target_sql(r), f.not_null, e.parent_schema, e.parent_table, f.joined) into v;
  return v;
end
$$;

-- Planning: rows of a child table outside the restored set (any tenant) pointing at rows that
-- overwriting the parent would delete.
create function pitr.fk_children_of_deleted(p_fk oid, p_parent_snapshot_table bigint)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_parent_snapshot_table);
  e record := pitr.fk_edge(p_fk);
  f record := pitr.fk_condition(p_fk, 'c', 'l');
  v bigint;
begin
  execute format('select count(*) from %I.%I c where exists (select from %s l where %s and %s
      and not exists (select from %s t where %s))',
    e.child_schema, e.child_table, r.live, r.tenant_pred, f.joined, pitr.target_sql(r),
    pitr.join_on(r.pk, 'l', 't')) into v;
  return v;
end
$$;
