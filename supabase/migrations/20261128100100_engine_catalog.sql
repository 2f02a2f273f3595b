-- The engine's view of the catalog: which tables are protected, the foreign-key graph and its
-- cache, keys, columns and the tenant predicate. Every name it hands on comes from the catalog
-- and is quoted with format('%I'); no caller text is ever pasted into SQL.

-- The service's own tables are never tenant data, even though several have a tenant_id column:
-- the three in public, and everything in its private schemas.
create function pitr.is_service_table(p_relid oid) returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
  select exists (
    select from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = p_relid
      and (n.nspname in ('pitr', 'pitr_store', 'supabase_migrations')
        or (n.nspname = 'public' and c.relname in ('backup_snapshots',
          'backup_pitr_rollback_history', 'backup_pitr_drills'))))
$$;

-- Every table the engine creates at run time (stores, the log's partitions) is closed to the
-- API roles when it is made, whatever default privileges the project has.
create function pitr.make_private(p_rel regclass) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  execute format('revoke all on table %s from public, anon, authenticated, service_role', p_rel);
end
$$;

-- Registry rows first; then every public table with a tenant_id column that has no registry row.
create view pitr.protected_tables as
with registry as (
  select c.oid as relid, p.table_schema, p.table_name, p.tenant_column, p.enabled
  from pitr.backup_protected_tables p
  join pg_namespace n on n.nspname = p.table_schema
  join pg_class c on c.relnamespace = n.oid and c.relname = p.table_name
  where c.relkind in ('r', 'p')
)
select relid, table_schema::text, table_name::text, tenant_column::text
from registry
where enabled and not pitr.is_service_table(relid)
union all
select c.oid, n.nspname::text, c.relname::text, 'tenant_id'
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition
  and exists (select from pg_attribute a
    where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
  and not pitr.is_service_table(c.oid)
  and not exists (select from registry r where r.relid = c.oid);

-- Foreign keys as read from the catalog: multi-column keys in key order.
create view pitr.fk_edges as
select k.oid as constraint_oid, k.conname::text as constraint_name,
  k.conrelid as child_relid, cn.nspname::text as child_schema, cc.relname::text as child_table,
  (select array_agg(a.attname::text order by x.ord)
     from unnest(k.conkey) with ordinality x(attnum, ord)
     join pg_attribute a on a.attrelid = k.conrelid and a.attnum = x.attnum) as child_columns,
  k.confrelid as parent_relid, pn.nspname::text as parent_schema, pc.relname::text as parent_table,
  (select array_agg(a.attname::text order by x.ord)
     from unnest(k.confkey) with ordinality x(attnum, ord)
     join pg_attribute a on a.attrelid = k.confrelid and a.attnum = x.attnum) as parent_columns,
  k.condeferrable as is_deferrable, k.condeferred as initially_deferred,
  case k.confdeltype when 'a' then 'no action' when 'r' then 'restrict' when 'c' then 'cascade'
    when 'n' then 'set null' when 'd' then 'set default' end as on_delete,
  case k.confupdtype when 'a' then 'no action' when 'r' then 'restrict' when 'c' then 'cascade'
    when 'n' then 'set null' when 'd' then 'set default' end as on_update,
  k.confmatchtype = 'f' as match_full
from pg_constraint k
join pg_class cc on cc.oid = k.conrelid join pg_namespace cn on cn.oid = cc.relnamespace
join pg_class pc on pc.oid = k.confrelid join pg_namespace pn on pn.oid = pc.relnamespace
where k.contype = 'f' and k.conparentid = 0;

-- Keeps backup_fk_constraints_cache equal to the catalog's FK graph; planning reads from it.
-- It writes only when the graph changed: restores of different tenants refresh it side by side,
-- and rewriting unchanged rows would make each wait for the other's row locks.
create function pitr.refresh_fk_cache() returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_count integer;
begin
  if not exists (
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
       on_update from pitr.fk_edges)
  ) then
    return 0;
  end if;
  delete from pitr.backup_fk_constraints_cache;
  insert into pitr.backup_fk_constraints_cache (constraint_oid, constraint_name, child_schema,
    child_table, child_columns, parent_schema, parent_table, parent_columns, is_deferrable,
    initially_deferred, on_delete, on_update)
  select constraint_oid, constraint_name, child_schema, child_table, child_columns, parent_schema,
    parent_table, parent_columns, is_deferrable, initially_deferred, on_delete, on_update
  from pitr.fk_edges;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;

create function pitr.primary_key_of(p_relid oid) returns text[]
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
  select array_agg(a.attname::text order by k.ord)
  from pg_index i
  cross join unnest(i.indkey) with ordinality k(attnum, ord)
  join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
  where i.indrelid = p_relid and i.indisprimary
$$;

-- The type a store keeps a column in. A store must never depend on the application's own types:
-- the application's DROP TYPE, ALTER TYPE ... RENAME VALUE or ALTER DOMAIN ... ADD CONSTRAINT
-- must behave exactly as without this project. So a domain is kept as its base type, and any
-- other type of the application's (an enum, a composite or range type, an array of one) as its
-- text, written and read back with the output settings pinned (see pitr.digest): exact, since
-- these types' text forms round-trip. Built-in and extension types are kept as they are.
create function pitr.store_type(p_type oid, p_typmod integer) returns text
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
declare
  t record;
begin
  select ty.typtype, ty.typbasetype, ty.typtypmod, n.nspname,
    exists (select from pg_depend d where d.classid = 'pg_type'::regclass and d.objid = ty.oid
      and d.deptype = 'e') as in_extension
  into t
  from pg_type ty join pg_namespace n on n.oid = ty.typnamespace
  where ty.oid = p_type;
  if t.nspname in ('pg_catalog', 'information_schema') or t.in_extension then
    return format_type(p_type, p_typmod);
  elsif t.typtype = 'd' then
    return pitr.store_type(t.typbasetype, t.typtypmod);
  end if;
  return 'text';
end
$$;

create function pitr.live_columns(p_relid oid)
returns table (name text, type text, type_oid oid, is_generated boolean, identity_always boolean,
  not_null boolean, has_default boolean, store_type text)
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
  select a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid, a.attgenerated <> '',
    a.attidentity = 'a', a.attnotnull, a.atthasdef or a.attidentity <> '',
    pitr.store_type(a.atttypid, a.atttypmod)
  from pg_attribute a
  where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped
  order by a.attnum
$$;

-- The columns of the table's unique indexes and exclusion constraints other than its primary key
-- (in keys, expressions and predicates alike). A restored row whose values in these change is
-- deleted and inserted again rather than updated, so that any permutation of unique values
-- among restored rows restores (see pitr.table_diff).
create function pitr.unique_columns(p_relid oid) returns text[]
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
  select coalesce(array_agg(distinct a.attname::text), '{}')
  from pg_index i
  join pg_attribute a on a.attrelid = i.indrelid and a.attnum > 0 and not a.attisdropped
    and (a.attnum = any (i.indkey::int2[]) or exists (
      select from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = i.indexrelid
        and d.refclassid = 'pg_class'::regclass and d.refobjid = i.indrelid
        and d.refobjsubid = a.attnum))
  where i.indrelid = p_relid and not i.indisprimary and (i.indisunique or i.indisexclusion)
$$;

-- A predicate on alias l selecting one tenant's rows that can use an index on the tenant column:
-- the tenant id is cast to the column's type, and matches nothing when the cast does not give
-- back the same text (the ids compare as tenant_column::text).
create function pitr.tenant_predicate(p_relid oid, p_tenant_column text, p_tenant text)
returns text
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
declare
  v_type text;
  v_back text;
begin
  select format_type(a.atttypid, a.atttypmod) into v_type
  from pg_attribute a
  where a.attrelid = p_relid and a.attname = p_tenant_column and a.attnum > 0
    and not a.attisdropped;
  if v_type is null then
    raise exception 'tenant column % is missing', p_tenant_column using errcode = 'PT404';
  end if;
  begin
    execute format('select (%L::%s)::text', p_tenant, v_type) into v_back;
  exception when others then
    return 'false';
  end;
  if v_back is distinct from p_tenant then
    return 'false';
  end if;
  return format('l.%I = %L::%s', p_tenant_column, p_tenant, v_type);
end
$$;
