-- The signatures recorded before schema changes (pitr.schema_changes, 20261129001600) leave with
-- the log's rows they belong to. Each is read only through its 'S' row in pitr.changes
-- (pitr.schema_changes_after joins from the log), so once the maintenance job has dropped that
-- row's day, or expired it from the default partition, the signature was kept for nothing, and
-- the table grew with every migration the application ever ran.

-- pitr.trim_change_default (20261128230000_log_maintenance.sql), the job's last step: it also
-- deletes the signatures whose 'S' row has left the log, and runs without JIT like every engine
-- function with settings (20261128231300_engine_no_jit.sql); everything else as it was. The lookup is
-- by each partition's (relid, tenant_id, changed_at) index, tenant_id null being a schema change.
create or replace function pitr.trim_change_default() returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp set lock_timeout = '100ms' set jit = off as $$
declare
  v_cutoff timestamptz := clock_timestamp() - (select retention from pitr.settings);
  v_deleted bigint;
begin
  perform set_config('lock_timeout',
    (select (extract(epoch from maintenance_lock_timeout) * 1000)::bigint::text || 'ms'
     from pitr.settings), true);
  delete from pitr.changes_default where changed_at < v_cutoff;
  get diagnostics v_deleted = row_count;
  if v_deleted > 0 then
    perform pitr.log_complete_after(v_cutoff);
  end if;
  delete from pitr.commits where committed_at < (select complete_since from pitr.settings);
  delete from pitr.schema_changes s where not exists (select from pitr.changes c
    where c.relid = s.relid and c.tenant_id is null and c.seq = s.seq and c.op = 'S');
  return v_deleted;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
