-- Two sessions that both found the FK graph cache stale (a burst of plans, drills and restores
-- right after a migration) both deleted and re-inserted it: the second's insert met the first's
-- committed rows, a 23505 and a 500. The rewrite is now serialised by a transaction-level
-- advisory lock, and the cache compared again once the lock is held. The unchanged case, every
-- call but the first after a migration, takes no lock and writes nothing.

create function pitr.fk_cache_stale() returns boolean
language sql stable set search_path = pg_catalog, pg_temp set jit = off as $$
  select exists (
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
       on_update from pitr.fk_edges))
$$;

-- From 20261128100100_engine_catalog.sql, with the lock and the second look.
create or replace function pitr.refresh_fk_cache() returns integer
language plpgsql set search_path = pg_catalog, pg_temp set jit = off as $$
declare
  v_count integer;
begin
  if not pitr.fk_cache_stale() then
    return 0;
  end if;
  perform pg_advisory_xact_lock(hashtext('pitr:fk_cache'), 0);
  -- A new statement, a new snapshot (READ COMMITTED): what the lock's last holder wrote is seen.
  if not pitr.fk_cache_stale() then
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

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
