-- Dropping a snapshot reads only the versions it may free (issue 13). pitr.drop_snapshot
-- (20261128100200_engine_store.sql) deleted every closed version of the tenant that no snapshot
-- left covered, and so checked each of the tenant's closed versions, every retained snapshot's
-- history, against the snapshot list: retention, which drops one expired snapshot a tenant a
-- day, cost more as the tenant's history grew. Dropping one of 28 snapshots of a 100,000-row
-- tenant with 112,560 closed versions took 3.7 s (embedded PostgreSQL 17, three runs rolled back).
--
-- A version [pitr_from, pitr_to) that the dropped snapshot d covered (pitr_from <= d < pitr_to)
-- is covered by no snapshot left exactly when it began after the snapshot left just before d
-- (prev) and ended no later than the one just after it (next): any other seq s is <= prev or
-- >= next. So the versions to free lie in the closed index's range pitr_to in (d, next], those
-- closed between d and the next snapshot, and the lookup reads what d held alone, not the
-- tenant's history. With no snapshot left after d (the newest dropped) the range is unbounded,
-- as before.
--
-- The old rule also freed closed versions that covered no snapshot before the drop began. Only
-- a snapshot deleted without pitr.drop_snapshot leaves such versions; every path here drops
-- through it (retention, the API, tests' clean-up), and tests/retention.test.ts checks that
-- every version left is covered by a kept snapshot.
create or replace function pitr.drop_snapshot(p_snapshot uuid) returns void
language plpgsql set search_path = pg_catalog, pg_temp set jit = off as $$
declare
  v_st record;
  v_prev bigint;
  v_next bigint;
begin
  create temp table if not exists pitr_dropped (store_id bigint, store_table text,
    store_tenant text, seq bigint) on commit drop;
  insert into pitr_dropped
  select distinct store_id, store_table, store_tenant, seq from pitr.backup_snapshot_tables
  where snapshot_id = p_snapshot;
  delete from public.backup_snapshots where id = p_snapshot;
  for v_st in select distinct * from pitr_dropped loop
    -- The nearest snapshots left on either side, by the tenant's snapshot tables of the store
    -- (backup_snapshot_tables_by_store). Inclusive: a snapshot left at d itself (there is none:
    -- seqs are unique) would make both ranges empty.
    select max(t.seq) into v_prev from pitr.backup_snapshot_tables t
    where t.store_id = v_st.store_id and t.store_tenant = v_st.store_tenant and t.seq <= v_st.seq;
    select min(t.seq) into v_next from pitr.backup_snapshot_tables t
    where t.store_id = v_st.store_id and t.store_tenant = v_st.store_tenant and t.seq >= v_st.seq;
    execute format('delete from pitr_store.%I s where s.pitr_tenant = %L and s.pitr_to is not null
        and s.pitr_to > %s and s.pitr_to <= %s and s.pitr_from <= %s and s.pitr_from > %s',
      v_st.store_table, v_st.store_tenant, v_st.seq,
      coalesce(v_next::text, '9223372036854775807'), v_st.seq,
      coalesce(v_prev::text, '-9223372036854775808'));
  end loop;
  delete from pitr_dropped;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
