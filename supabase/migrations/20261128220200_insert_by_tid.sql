-- A restore's batch of inserts reads its store rows by TID. With a batch of 10,000 TIDs the
-- planner costs a TID scan as 10,000 random reads and chose a sequential scan of the whole store
-- instead, once per batch: a full restore of a 100,000-row table read its store ten times over
-- (20-30 ms of every 90 ms batch). The TIDs of a batch are in store order and on few pages, so the
-- TID scan is what it should be: sequential scans are off for the insert's statement only.
create or replace function pitr.restore_write(p_snapshot_table bigint, p_from bigint, p_to bigint)
returns table (updated bigint, inserted bigint)
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_updates tid[];
  v_live tid[];
  v_inserts tid[];
  v_upd bigint := 0;
  v_ins bigint := 0;
  v_seqscan text;
begin
  -- The batch goes to each statement as array parameters: EXECUTE ... USING plans with their
  -- values, so the planner knows the batch's size.
  execute format('select array_agg(sctid) filter (where not ins), array_agg(lctid) filter (where not ins),
      array_agg(sctid) filter (where ins) from %s where n >= %s and n < %s', r.writes, p_from, p_to)
  into v_updates, v_live, v_inserts;
  if cardinality(r.upd) > 0 and v_updates is not null then
    v_upd := pitr.restore_update(p_snapshot_table, v_updates, v_live);
  end if;
  if v_inserts is not null then
    v_seqscan := current_setting('enable_seqscan');
    perform set_config('enable_seqscan', 'off', true);
    execute format('insert into %s (%s) %s select %s from %s t',
      r.live, array_to_string(r.cols, ', '),
      case when r.overriding then 'overriding system value' else '' end,
      (select string_agg('t.' || c, ', ') from unnest(r.cols) c),
      pitr.target_sql(r, '$1'))
    using v_inserts;
    get diagnostics v_ins = row_count;
    perform set_config('enable_seqscan', v_seqscan, true);
  end if;
  return query select v_upd, v_ins;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
