-- Five of the engine's catalog lookups are planned once per session, not at every call (issue
-- 13). They were SQL functions with SET clauses: such a function is never inlined, and PostgreSQL
-- (15 to 17) plans its query again at each call, where a PL/pgSQL function keeps its plans for the
-- session. In a loop of calls on PostgreSQL 15: the FK cache's staleness check 5.3 ms a call as SQL,
-- 0.54 ms as PL/pgSQL; pitr.is_service_table 92 us and 23; pitr.primary_key_of 155 us and 34.
-- Ten 0.1% drift restores of the benchmark's tenant, each after its snapshot, alternated twice with
-- the SQL versions (bench/_prof_drift.ts, one-off; pg_stat_user_functions): the catalog lookups
-- 164-170 ms in all against 264-271, the restore's median 244-246 ms against 255-257.
-- Not converted: pitr.fk_edge, pitr.unique_columns, pitr.fk_condition and pitr.fk_child_columns,
-- measured slower or no faster as PL/pgSQL in the same kind of run (fk_edge 0.51 ms a call against
-- 0.38, unique_columns 0.16 against 0.08, the other two within 0.2 ms).
-- The queries are unchanged. Each keeps its settings, jit = off included
-- (20261128231300_engine_no_jit.sql); a function that returns a table resolves a name its query
-- shares with an output column to the column (#variable_conflict use_column), as the SQL did.

-- pitr.fk_cache_stale (20261129000400_fk_cache_refresh_serialised.sql).
create or replace function pitr.fk_cache_stale() returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp set jit = off as $$
begin
  return exists (
    (select constraint_oid, constraint_name, child_schema, child_table, child_columns,
       parent_schema, parent_table, parent_columns, is_deferrable, initially_deferred, on_delete,
       on_update from pitr.fk_edges
     except
     select constraint_oid, constraint_name, child_schema, child_table, child_columns,
       parent_schema, parent_table, parent_columns, is_deferrable, initially_deferred, on_delete,
       on_update from pitr.backup_fk_constraints_cache)
    union all
    (select constraint_oid, constraint_name, child_schema, child_table, child_columns,
       parent_schema, parent_table, parent_columns, is_deferrable, initially_deferred, on_delete,
       on_update from pitr.backup_fk_constraints_cache
     except
     select constraint_oid, constraint_name, child_schema, child_table, child_columns,
       parent_schema, parent_table, parent_columns, is_deferrable, initially_deferred, on_delete,
       on_update from pitr.fk_edges));
end
$$;

-- pitr.column_pairs (20261129001400_columns_by_identity.sql).
create or replace function pitr.column_pairs(p_snapshot_table bigint)
returns table (ord bigint, stored text, stored_type text, store_type text, name text, type text,
  is_generated boolean, identity_always boolean, not_null boolean, renamed boolean)
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on
set jit = off
as $$
#variable_conflict use_column
begin
  return query
  with st as (
    select x.*, to_regclass(format('%I.%I', x.table_schema, x.table_name)) as live_relid
    from pitr.backup_snapshot_tables x where x.id = p_snapshot_table),
  -- pitr.live_columns without the store type each column would have (a call per column).
  live as (
    select a.attnum, a.attname::text as name, format_type(a.atttypid, a.atttypmod) as type,
      a.attgenerated <> '' as is_generated, a.attidentity = 'a' as identity_always,
      a.attnotnull as not_null
    from st join pg_attribute a on a.attrelid = st.live_relid
    where a.attnum > 0 and not a.attisdropped),
  snap as (
    select s.ord, s.col, case when st.relid = st.live_relid then st.attnums[s.ord] end as attnum
    from st, jsonb_array_elements(st.columns) with ordinality s(col, ord)),
  by_id as (
    select s.ord, l.name from snap s join live l on l.attnum = s.attnum)
  select s.ord, s.col ->> 'name', s.col ->> 'type', s.col ->> 'store', l.name, l.type,
    l.is_generated, l.identity_always, l.not_null, coalesce(l.name <> s.col ->> 'name', false)
  from snap s
  left join live l on l.name = coalesce((select i.name from by_id i where i.ord = s.ord),
    (select n.name from live n where n.name = s.col ->> 'name'
       and not exists (select from by_id i where i.name = n.name)))
  order by s.ord;
end
$$;

-- pitr.primary_key_of (20261128100100_engine_catalog.sql).
create or replace function pitr.primary_key_of(p_relid oid) returns text[]
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on
set jit = off as $$
begin
  return (select array_agg(a.attname::text order by k.ord)
    from pg_index i
    cross join unnest(i.indkey) with ordinality k(attnum, ord)
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = p_relid and i.indisprimary);
end
$$;

-- pitr.is_service_table (20261128100100_engine_catalog.sql).
create or replace function pitr.is_service_table(p_relid oid) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp set jit = off as $$
begin
  return exists (
    select from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = p_relid
      and (n.nspname in ('pitr', 'pitr_store', 'supabase_migrations')
        or (n.nspname = 'public' and c.relname in ('backup_snapshots',
          'backup_pitr_rollback_history', 'backup_pitr_drills'))));
end
$$;

-- pitr.live_columns (20261128100100_engine_catalog.sql).
create or replace function pitr.live_columns(p_relid oid)
returns table (name text, type text, type_oid oid, is_generated boolean, identity_always boolean,
  not_null boolean, has_default boolean, store_type text)
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on
set jit = off as $$
#variable_conflict use_column
begin
  return query
  select a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid, a.attgenerated <> '',
    a.attidentity = 'a', a.attnotnull, a.atthasdef or a.attidentity <> '',
    pitr.store_type(a.atttypid, a.atttypmod)
  from pg_attribute a
  where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped
  order by a.attnum;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
