-- The FK check of written child rows collects the distinct parent keys they point at (less the
-- keys of parent rows the restore wrote): for a whole tenant that is every row of the table, and
-- sorting them for DISTINCT and EXCEPT took most of the check (100,000 enrollments: a sort of
-- 100,000 keys twice). Hashed instead: the keys are few next to work_mem (64MB here).
alter function pitr.fk_dangling_children(oid, bigint, bigint) set enable_sort = off;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
