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

-- Rows the restore wrote into a child table that point at no parent row, counted after locking
-- every parent row they point at FOR KEY SHARE, as PostgreSQL's own FK triggers do: no other
-- session can delete such a parent or change its key until this transaction ends, and one that
-- did so just before is seen (the count runs after the locks, on a fresh snapshot). Parent rows
-- this restore wrote itself (p_parent_snapshot_table: the parent is restored too) are its own,
-- locked already, so only the other keys are looked up, by the parent's key index. MATCH FULL:
-- a key with some columns null and others not points at nothing and counts too.
create function pitr.fk_dangling_children(p_fk oid, p_snapshot_table bigint,
  p_parent_snapshot_table bigint default null) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  e record := pitr.fk_edge(p_fk);
  f record := pitr.fk_condition(p_fk, 't', 'p');
  v_keys text := (select string_agg(format('t.%I', c), ', ') from unnest(e.child_columns) c);
  v_parent_keys text := (select string_agg(format('p.%I', c), ', ') from unnest(e.parent_columns) c);
  v_written text := pitr.written_sql(r);
  rp pitr.restore_sql;
  v_left text;
  v_partial bigint := 0;
  v bigint;
begin
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

-- Rows of any tenant in a child table that pointed at rows the restore deleted from its parent
-- (or deleted to insert again with another unique key: see pitr.table_diff), and whose parent
-- key is not there any more. A session adding such a child meanwhile waits on the deleted row's
-- lock in its own FK trigger, and fails once this transaction commits. Nested loops stay on here: the deleted rows are
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

-- Planning: rows of a child table outside the restored set (any tenant) pointing at a key that
-- overwriting the parent takes away: a key of the tenant's rows now that no row of the snapshot
-- holds (the row is deleted, or its referenced unique key changes).
create function pitr.fk_children_of_deleted(p_fk oid, p_parent_snapshot_table bigint)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_parent_snapshot_table);
  e record := pitr.fk_edge(p_fk);
  f record := pitr.fk_condition(p_fk, 'c', 'g');
  v_live_keys text := (select string_agg(format('l.%I', c), ', ') from unnest(e.parent_columns) c);
  v_target_keys text := (select string_agg(format('t.%I', c), ', ') from unnest(e.parent_columns) c);
  v_not_null text := (select string_agg(format('l.%I is not null', c), ' and ')
    from unnest(e.parent_columns) c);
  v bigint;
begin
  execute format('with gone as materialized (
        select %s from %s l where %s and %s except select %s from %s t)
      select count(*) from gone g join %I.%I c on %s',
    v_live_keys, r.live, r.tenant_pred, v_not_null, v_target_keys, pitr.target_sql(r),
    e.child_schema, e.child_table, f.joined) into v;
  return v;
end
$$;
