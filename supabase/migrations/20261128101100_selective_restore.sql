-- Selective restore: a person chooses rows (by the keys pitr-diff shows) and exactly those are
-- brought to their state in the snapshot, every other row of the tenant left as it is. The chosen
-- rows live in a temporary table per snapshot table; table_diff then keeps only them. Before
-- anything is written, the choice is checked for what it would break (a parent it needs, a child
-- it would orphan, a unique value it collides with), so the rows it lacks can be named.

alter table public.backup_pitr_rollback_history
  drop constraint if exists backup_pitr_rollback_history_strategy_check;
alter table public.backup_pitr_rollback_history
  add constraint backup_pitr_rollback_history_strategy_check
  check (strategy in ('overwrite', 'merge', 'selective'));
-- The rows chosen ([{table, keys} | {table, all}]) and the ones added as their dependencies.
alter table public.backup_pitr_rollback_history add column if not exists selection jsonb;
alter table public.backup_pitr_rollback_history add column if not exists with_dependencies boolean
  not null default false;
alter table public.backup_pitr_rollback_history add column if not exists dependencies_added jsonb
  not null default '[]';

-- The key object of a row on alias p_alias: its primary key's columns by name, as to_jsonb
-- renders them (pitr-diff's keys).
create function pitr.key_object_sql(r pitr.restore_sql, p_alias text) returns text
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
  select format('jsonb_build_object(%s)', string_agg(format('%L, %s.%s', k.name, p_alias,
    k.quoted), ', ' order by k.ord))
  from pitr.key_columns(r) k
$$;

-- Adds chosen rows to the snapshot table's selection: key objects (a table with a primary key)
-- or pitr-diff's opaque names (a table without one). A key given twice is one key. Returns the
-- keys that cannot name a row at all (a missing or malformed key column).
create function pitr.select_rows(p_snapshot_table bigint, p_keys jsonb) returns setof jsonb
language plpgsql set search_path = pg_catalog, pg_temp
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_types text;
begin
  if cardinality(r.pk) = 0 then
    execute format('create temp table if not exists %s (side char, h bigint, n bigint,
        pitr_key jsonb, primary key (side, h, n)) on commit drop', r.selection);
    return query execute format('with given as (
          select k, substring(k #>> ''{}'' from ''^([di]):(-?[0-9]+):([0-9]+)$'') is not null as ok
          from jsonb_array_elements($1) k),
        added as (insert into %s select split_part(k #>> ''{}'', '':'', 1),
            split_part(k #>> ''{}'', '':'', 2)::bigint, split_part(k #>> ''{}'', '':'', 3)::bigint, k
          from given where ok and jsonb_typeof(k) = ''string'' on conflict do nothing)
      select k from given where not ok or jsonb_typeof(k) <> ''string''', r.selection)
    using p_keys;
    return;
  end if;
  select string_agg(format('%s %s', k.quoted, k.type), ', ' order by k.ord) into v_types
  from pitr.key_columns(r) k;
  execute format('create temp table if not exists %s (%s, pitr_key jsonb, primary key (%s))
      on commit drop', r.selection, v_types, array_to_string(r.pk, ', '));
  -- jsonb_populate_record reads each key object with the key columns' own types.
  return query execute format('with given as (
        select k, v.* from jsonb_array_elements($1) k
        cross join lateral jsonb_populate_record(null::%1$s,
          case when jsonb_typeof(k) = ''object'' then k else ''{}'' end) v),
      added as (insert into %2$s select %3$s, k from given where %4$s on conflict do nothing)
    select k from given where not (%4$s)',
    r.live, r.selection, (select string_agg('given.' || c, ', ') from unnest(r.pk) c),
    (select string_agg(format('given.%s is not null', c), ' and ') from unnest(r.pk) c))
  using p_keys;
end
$$;

-- Chosen keys that name no row pitr-diff shows (neither written nor deleted by the restore).
-- Call after table_diff has materialized the selection, before anything is written.
create function pitr.unknown_selected(p_snapshot_table bigint) returns setof jsonb
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB'
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
begin
  if to_regclass(r.selection) is null then
    return;
  end if;
  if cardinality(r.pk) = 0 then
    return query execute format('select s.pitr_key from %1$s s
        where not exists (select from (%2$s) p where p.h = s.h and p.n = s.n
          and ((s.side = ''i'' and p.sctid is not null) or (s.side = ''d'' and p.lctid is not null)))',
      r.selection, pitr.multiset_diff_sql(r));
    return;
  end if;
  return query execute format('select s.pitr_key from %1$s s
      where not exists (select from %2$s t join %3$s w on w.sctid = t.pitr_ctid where %4$s)
        and not exists (select from %5$s d where %6$s)',
    r.selection, pitr.target_sql(r), r.writes, pitr.join_on(r.pk, 's', 't'),
    case when to_regclass(r.deletes) is null then '(select 1 where false)' else r.deletes end,
    pitr.join_on(r.pk, 's', 'd'));
end
$$;

-- Dependencies of a choice, for one foreign key between two tables of the snapshot (child
-- p_child_st, parent p_parent_st, either restored or not): rows whose state in the snapshot the
-- restore must also bring back so that the key holds. Each row: the table (schema.table), the
-- row's key object, and whether choosing it can help (a row of this tenant in a snapshot table).
--  1. Written child rows pointing at a parent key that will not exist: the parent's row in the
--     snapshot with that key.
--  2. Parent rows deleted or re-keyed: live child rows (any table) still pointing at the key
--     taken away, that the restore neither deletes nor rewrites.
create function pitr.selection_dependencies(p_fk oid, p_child_st bigint, p_parent_st bigint)
returns table (table_name text, key jsonb, fixable boolean)
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB'
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  e record := pitr.fk_edge(p_fk);
  rc pitr.restore_sql := pitr.restore_sql(p_child_st);
  rp pitr.restore_sql := pitr.restore_sql(p_parent_st);
  -- Child key values renamed to the parent's columns, so both sides line up by name.
  v_as_parent text := (select string_agg(format('t.%I as %I', c, p), ', ')
    from unnest(e.child_columns, e.parent_columns) u(c, p));
  v_not_null text := (select string_agg(format('t.%I is not null', c), ' and ')
    from unnest(e.child_columns) c);
  v_parent_cols text := (select string_agg(format('p.%I', p), ', ') from unnest(e.parent_columns) p);
  v_k_p text := (select string_agg(format('k.%I = p.%I', p, p), ' and ')
    from unnest(e.parent_columns) p);
  v_l_p text := (select string_agg(format('l.%I = p.%I', c, p), ' and ')
    from unnest(e.child_columns, e.parent_columns) u(c, p));
  v_parent_deleting text := 'false';
  v_parent_written text := format('(select %s from %s p where false)', v_parent_cols, rp.live);
  v_child_untouched text := 'true';
begin
  if to_regclass(rp.deletes) is not null then
    v_parent_deleting := format('exists (select from %s d
      where (d.pitr_ltoid, d.pitr_lctid) = (p.tableoid, p.ctid))', rp.deletes);
  end if;
  if to_regclass(rp.writes) is not null then
    v_parent_written := format('(select %s from %s p join %s w on w.sctid = p.pitr_ctid)',
      v_parent_cols, pitr.target_sql(rp), rp.writes);
  end if;
  -- 1. Parents the written children need.
  if to_regclass(rc.writes) is not null and cardinality(rp.pk) > 0 then
    return query execute format('with needed as (
          select distinct %1$s from %2$s t join %3$s w on w.sctid = t.pitr_ctid where %4$s
          except select * from %5$s x),
        missing as (
          select k.* from needed k
          where not exists (select from %6$s p where %7$s and not %8$s))
      select %9$L, %10$s, true from missing k join %11$s p on %7$s
      union all
      select %9$L, to_jsonb(k), false from missing k
      where not exists (select from %11$s p where %7$s)',
      v_as_parent, pitr.target_sql(rc), rc.writes, v_not_null, v_parent_written, rp.live, v_k_p,
      v_parent_deleting, format('%s.%s', e.parent_schema, e.parent_table),
      pitr.key_object_sql(rp, 'p'), pitr.target_sql(rp));
  end if;
  -- 2. Children orphaned by the parent rows the restore takes away.
  if to_regclass(rp.deletes) is not null then
    if to_regclass(rc.deletes) is not null then
      v_child_untouched := format('not exists (select from %s d
        where (d.pitr_ltoid, d.pitr_lctid) = (l.tableoid, l.ctid))', rc.deletes);
    end if;
    if to_regclass(rc.writes) is not null then
      v_child_untouched := v_child_untouched || format(' and not exists (select from %s w
        where (w.ltoid, w.lctid) = (l.tableoid, l.ctid))', rc.writes);
    end if;
    return query execute format('with gone as (select %1$s from %2$s p except select * from %3$s x)
      select %4$L, %5$s, %6$s from %7$s l
      where exists (select from gone p where %8$s) and %9$s',
      v_parent_cols, rp.deletes, v_parent_written,
      format('%s.%s', e.child_schema, e.child_table),
      case when cardinality(rc.pk) > 0 then pitr.key_object_sql(rc, 'l') else 'to_jsonb(l)' end,
      case when cardinality(rc.pk) > 0 then rc.tenant_pred else 'false' end,
      rc.live, v_l_p, v_child_untouched);
  end if;
end
$$;

-- Dependencies of a choice in one table through its unique indexes (other than the primary key):
-- live rows that hold a unique value a written row takes, and that the restore neither deletes
-- nor rewrites. Each row: its key object, and whether it is the tenant's (choosing it can help).
create function pitr.selection_conflicts(p_snapshot_table bigint)
returns table (table_name text, key jsonb, fixable boolean)
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_index record;
  v_untouched text;
begin
  if to_regclass(r.writes) is null or cardinality(r.pk) = 0 then
    return;
  end if;
  v_untouched := format('not exists (select from %s w where (w.ltoid, w.lctid) = (l.tableoid,
    l.ctid))', r.writes);
  if to_regclass(r.deletes) is not null then
    v_untouched := v_untouched || format(' and not exists (select from %s d where
      (d.pitr_ltoid, d.pitr_lctid) = (l.tableoid, l.ctid))', r.deletes);
  end if;
  -- Unique indexes on plain columns, all of them restored (expression and partial indexes are
  -- left to PostgreSQL's own check when the rows are written).
  for v_index in
    select array_agg(format('%I', a.attname) order by k.ord) as cols
    from pg_index i
    cross join unnest(i.indkey::int2[]) with ordinality k(attnum, ord)
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = r.relid and i.indisunique and not i.indisprimary
      and i.indexprs is null and i.indpred is null
    group by i.indexrelid
    having bool_and(format('%I', a.attname) = any (r.cols))
  loop
    return query execute format('select %1$L, %2$s, %3$s from %4$s l
        where %5$s and exists (select from %6$s t join %7$s w on w.sctid = t.pitr_ctid
          where %8$s and not (%9$s))',
      (select format('%s.%s', st.table_schema, st.table_name) from pitr.backup_snapshot_tables st
        where st.id = p_snapshot_table),
      pitr.key_object_sql(r, 'l'), r.tenant_pred, r.live, v_untouched, pitr.target_sql(r),
      r.writes, pitr.join_on(v_index.cols, 't', 'l'), pitr.join_on(r.pk, 't', 'l'));
  end loop;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
