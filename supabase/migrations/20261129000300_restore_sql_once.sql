-- pitr.restore_sql is computed once per snapshot table per transaction. Every engine function of a
-- restore starts from it (a dozen calls per table: the diff, the undo, each batch, the
-- verification, each FK check), and each call read the catalog again: 1.5 ms a call, 60 ms of a
-- restore of three tables on PostgreSQL 15. The result is kept in a transaction-local setting,
-- gone at commit or rollback. What it reads does not change within the transaction: the snapshot
-- table's row never changes, and the live table's definition is held by the lock the
-- transaction's first read of it takes (a DDL statement waits for the restore to end).

create or replace function pitr.restore_sql(p_snapshot_table bigint) returns pitr.restore_sql
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on set jit = off
as $$
declare
  v_st pitr.backup_snapshot_tables;
  r pitr.restore_sql;
  v_pk text[];
  v_cached text := current_setting('pitr.restore_sql_' || p_snapshot_table, true);
begin
  if v_cached <> '' then
    return v_cached::pitr.restore_sql;
  end if;
  select * into v_st from pitr.backup_snapshot_tables where id = p_snapshot_table;
  if not found then
    raise exception 'snapshot table % not found', p_snapshot_table using errcode = 'PT404';
  end if;
  r.relid := to_regclass(format('%I.%I', v_st.table_schema, v_st.table_name));
  if r.relid is null then
    raise exception 'table %.% no longer exists', v_st.table_schema, v_st.table_name
      using errcode = 'PT422';
  end if;
  r.live := format('%I.%I', v_st.table_schema, v_st.table_name);
  r.store := format('pitr_store.%I', v_st.store_table);
  r.members := pitr.members(v_st.store_tenant, v_st.seq);
  r.by_text := (select hash_by_text from pitr.backup_stores where id = v_st.store_id);
  r.tenant_pred := pitr.tenant_predicate(r.relid, v_st.tenant_column, v_st.tenant_id);
  r.checksum := v_st.checksum;
  r.writes := format('pg_temp.%I', 'pitr_write_' || p_snapshot_table);
  r.deletes := format('pg_temp.%I', 'pitr_delete_' || p_snapshot_table);
  r.selection := format('pg_temp.%I', 'pitr_select_' || p_snapshot_table);
  v_pk := coalesce(pitr.primary_key_of(r.relid), '{}');

  -- s.col ->> 'store' is the type the value is stored in, s.col ->> 'type' the live type it had.
  select array_agg(format('%I', c.name) order by s.ord),
    array_agg(case when c.type = s.col ->> 'store' then format('s.%I', c.name)
      else format('s.%I::%s', c.name, c.type) end order by s.ord),
    array_agg(case when c.type = s.col ->> 'store' then format('l.%I', c.name)
      else format('l.%I::%s', c.name, s.col ->> 'store') end order by s.ord),
    coalesce(array_agg(format('%I', c.name) order by s.ord)
      filter (where not c.identity_always and c.name <> all (v_pk)), '{}'),
    -- In a unique index or exclusion constraint, GENERATED ALWAYS (an UPDATE cannot set it), or
    -- the key itself: a key equal but not identical (1.0 and 1.00) matches, yet must be rewritten.
    coalesce(array_agg(format('%I', c.name) order by s.ord)
      filter (where c.name = any (pitr.unique_columns(r.relid)) or c.identity_always
        or c.name = any (v_pk)), '{}'),
    coalesce(bool_or(c.identity_always), false),
    count(*) = jsonb_array_length(v_st.columns) and bool_and(c.type = s.col ->> 'type')
  into r.cols, r.exprs, r.live_exprs, r.upd, r.reinsert, r.overriding, r.exact
  from jsonb_array_elements(v_st.columns) with ordinality s(col, ord)
  join pitr.live_columns(r.relid) c on c.name = s.col ->> 'name' and not c.is_generated;

  if exists (select from unnest(v_pk) k
      where not exists (select from jsonb_array_elements(v_st.columns) c
        where c ->> 'name' = k)) then
    raise exception 'the primary key of %.% is not in the snapshot', v_st.table_schema,
      v_st.table_name using errcode = 'PT422';
  end if;
  r.pk := array(select format('%I', k) from unnest(v_pk) k);
  perform set_config('pitr.restore_sql_' || p_snapshot_table, r::text, true);
  return r;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
