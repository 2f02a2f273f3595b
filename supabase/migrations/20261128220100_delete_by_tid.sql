-- Overwrite, step 1, proportional to what it deletes: the rows table_diff found missing from the
-- snapshot are fetched by TID (read in this transaction), not found by a join of the deletion set
-- with every row of the tenant (a seq scan of 100,000 rows to delete 1,000 took 56 ms of a 5%
-- drift restore). The key (or, for a multiset, the partition and TID) and the tenant are checked
-- again on every row, so a TID reused since can never reach another row; a row another session
-- changed since the diff is not deleted, and the verification before commit refuses the restore.
-- The deleted rows stay in restore_sql.deletes until commit for the foreign-key check.
create or replace function pitr.restore_delete(p_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_rows bigint;
begin
  execute format('delete from %1$s l using %2$s d
      where l.ctid = any (array(select pitr_lctid from %2$s))
        and l.tableoid = d.pitr_ltoid and l.ctid = d.pitr_lctid and %3$s and %4$s',
    r.live, r.deletes,
    case when cardinality(r.pk) > 0 then pitr.join_on(r.pk, 'l', 'd') else 'true' end,
    r.tenant_pred);
  get diagnostics v_rows = row_count;
  return v_rows;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
