-- Stores made before pitr.store_type kept columns in the application's own types (an enum, a
-- domain, a composite), which blocked the application's DROP TYPE and made its ALTER DOMAIN
-- re-check snapshot data. Each such column is converted to its store type (a domain's base type,
-- else text) under the pinned output settings, and every row's hash, every head and the checksum
-- of every snapshot of that store are computed again. A snapshot whose stored rows did not match
-- their checksum before the conversion keeps its old checksum, so it still fails validation: the
-- conversion never blesses an altered store.
do $$
declare
  st pitr.backup_stores;
  c record;
  v_st pitr.backup_snapshot_tables;
  v_cols jsonb;
  v_converted boolean;
  v_intact bigint[];
  v_exprs text[];
begin
  perform set_config('timezone', 'UTC', true);
  perform set_config('datestyle', 'ISO, YMD', true);
  perform set_config('intervalstyle', 'postgres', true);
  perform set_config('extra_float_digits', '3', true);
  perform set_config('bytea_output', 'hex', true);
  perform set_config('lc_monetary', 'C', true);
  perform set_config('xmloption', 'content', true);
  for st in select * from pitr.backup_stores order by id loop
    v_cols := '[]';
    v_converted := false;
    for c in
      select x.col, a.atttypid, a.atttypmod,
        pitr.store_type(a.atttypid, a.atttypmod) as store, format_type(a.atttypid, a.atttypmod) as now
      from jsonb_array_elements(st.columns) with ordinality x(col, ord)
      join pg_attribute a on a.attrelid = format('pitr_store.%I', st.store_table)::regclass
        and a.attname = x.col ->> 'name'
      order by x.ord
    loop
      v_cols := v_cols || jsonb_build_array(c.col || jsonb_build_object('store', c.store));
      v_converted := v_converted or c.store <> c.now;
    end loop;
    if v_converted then
      v_exprs := array(select format('s.%I', x ->> 'name') from jsonb_array_elements(st.columns) x);
      select coalesce(array_agg(t.id), '{}') into v_intact
      from pitr.backup_snapshot_tables t
      where t.store_id = st.id and t.checksum = pitr.digest(
        format('pitr_store.%I s where %s', st.store_table, pitr.members(t.store_tenant, t.seq)),
        v_exprs, st.hash_by_text);
      for c in
        select x ->> 'name' as name, x ->> 'store' as store from jsonb_array_elements(v_cols) x
      loop
        execute format('alter table pitr_store.%I alter column %I type %s using %I::%s',
          st.store_table, c.name, c.store, c.name, c.store);
      end loop;
      st.hash_by_text := pitr.hash_by_text(array(select x ->> 'store' from jsonb_array_elements(v_cols) x));
      execute format('update pitr_store.%I s set pitr_hash = %s', st.store_table,
        pitr.row_hash_sql(v_exprs, st.hash_by_text));
      execute format('update pitr.backup_store_heads h set row_count = x.n, hash_sum = x.total
          from (select pitr_tenant, count(*) as n, coalesce(sum(pitr_hash::numeric), 0) as total
                from pitr_store.%I where pitr_to is null group by pitr_tenant) x
          where h.store_id = %s and h.tenant_id = x.pitr_tenant', st.store_table, st.id);
      for v_st in select * from pitr.backup_snapshot_tables where id = any (v_intact) loop
        update pitr.backup_snapshot_tables set checksum = pitr.digest(
          format('pitr_store.%I s where %s', st.store_table, pitr.members(v_st.store_tenant, v_st.seq)),
          v_exprs, st.hash_by_text)
        where id = v_st.id;
      end loop;
    end if;
    update pitr.backup_stores set columns = v_cols, hash_by_text = st.hash_by_text
    where id = st.id;
    update pitr.backup_snapshot_tables set columns = v_cols where store_id = st.id;
  end loop;
end
$$;
