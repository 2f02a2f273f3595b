-- Restoring one table: the diff by primary key, the deletes and batched writes, sequences, and
-- the verification before commit. Rows never leave the database.

-- The pieces of SQL that restoring one snapshot table into its live table needs, all quoted.
create type pitr.restore_sql as (
  relid oid,
  live text,         -- "schema"."table"
  store text,        -- pitr_store."sN"
  members text,      -- which of the store's versions are this snapshot's rows, on alias s
  by_text boolean,   -- the store hashes rows by their text
  tenant_pred text,  -- on alias l
  cols text[],       -- quoted names of the columns restored: in the snapshot and writable now
  exprs text[],      -- the snapshot's value of each, on alias s, cast to today's type
  pk text[],         -- quoted primary key columns of the live table
  upd text[],        -- columns an UPDATE may set: cols less the key and GENERATED ALWAYS identity
  overriding boolean,-- a GENERATED ALWAYS identity column is written
  exact boolean,     -- every snapshot column is restored as it is: the recorded checksum applies
  checksum text,     -- the snapshot table's recorded checksum
  writes text,       -- pg_temp table of the store rows a restore writes (see table_diff)
  deletes text       -- pg_temp table of the live rows a restore deletes
);

create function pitr.restore_sql(p_snapshot_table bigint) returns pitr.restore_sql
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
declare
  v_st pitr.backup_snapshot_tables;
  r pitr.restore_sql;
  v_pk text[];
begin
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
  v_pk := pitr.primary_key_of(r.relid);
  if v_pk is null then
    raise exception 'table %.% has no primary key now', v_st.table_schema, v_st.table_name
      using errcode = 'PT422';
  end if;

  select array_agg(format('%I', c.name) order by s.ord),
    array_agg(case when c.type = s.col ->> 'type' then format('s.%I', c.name)
      else format('s.%I::%s', c.name, c.type) end order by s.ord),
    coalesce(array_agg(format('%I', c.name) order by s.ord)
      filter (where not c.identity_always and c.name <> all (v_pk)), '{}'),
    coalesce(bool_or(c.identity_always), false),
    count(*) = jsonb_array_length(v_st.columns) and bool_and(c.type = s.col ->> 'type')
  into r.cols, r.exprs, r.upd, r.overriding, r.exact
  from jsonb_array_elements(v_st.columns) with ordinality s(col, ord)
  join pitr.live_columns(r.relid) c on c.name = s.col ->> 'name' and not c.is_generated;

  if exists (select from unnest(v_pk) k
      where not exists (select from jsonb_array_elements(v_st.columns) c
        where c ->> 'name' = k)) then
    raise exception 'the primary key of %.% is not in the snapshot', v_st.table_schema,
      v_st.table_name using errcode = 'PT422';
  end if;
  r.pk := array(select format('%I', k) from unnest(v_pk) k);
  return r;
end
$$;

-- The snapshot's rows of one table as they would be written today; with p_rows, only the store
-- rows whose ctids that tid[] expression holds (a batch of the write set).
create function pitr.target_sql(r pitr.restore_sql, p_rows text default null) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  -- A batch (p_rows: an expression of type tid[]) is fetched by TID scan in a subquery of its
  -- own (offset 0 keeps the planner from merging it): given the tenant predicate too, it could
  -- scan the tenant's rows and test each against the whole TID list.
  select format('(select s.ctid as pitr_ctid, %s from %s s where %s)',
    (select string_agg(format('%s as %s', e, c), ', ') from unnest(r.exprs, r.cols) x(e, c)),
    case when p_rows is null then r.store
      else format('(select s.ctid, s.* from %s s where s.ctid = any (%s) offset 0)',
        r.store, p_rows) end,
    r.members)
$$;

create function pitr.join_on(p_cols text[], p_left text, p_right text) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select string_agg(format('%s.%s = %s.%s', p_left, c, p_right, c), ' and ')
  from unnest(p_cols) c
$$;

create function pitr.row_of(p_cols text[], p_alias text) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select format('row(%s)', string_agg(format('%s.%s', p_alias, c), ', '))
  from unnest(p_cols) c
$$;

-- What restoring one table would do, by primary key, in one pass over the snapshot's rows and
-- the tenant's rows. Rows compare by their binary image (record_image_ne, as REFRESH
-- MATERIALIZED VIEW CONCURRENTLY does), which is stricter than = (1.0 and 1.00 differ). conflicts: snapshot rows to insert whose key now belongs to
-- another tenant's row (the insert would fail).
-- With p_materialize (inside a restore's transaction), the rows to write and to delete are kept
-- in temporary tables (restore_sql.writes, .deletes) for restore_delete and restore_write.
create function pitr.table_diff(p_snapshot_table bigint, p_strategy text,
  p_materialize boolean default false)
returns table (ins bigint, upd bigint, del bigint, unchanged bigint, conflicts bigint)
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_rows bigint := (select row_count from pitr.backup_snapshot_tables where id = p_snapshot_table);
  v_matched text := format('l.%s is not null', r.pk[1]);
  v_differs text := format('record_image_ne(%s, %s)', pitr.row_of(r.cols, 'l'), pitr.row_of(r.cols, 't'));
  v_ins bigint := 0; v_upd bigint := 0; v_del bigint := 0; v_conf bigint := 0;
begin
  if p_strategy = 'merge' then
    v_differs := 'false';
  end if;
  if not p_materialize then
    -- A preview counts in one pass, and also counts the keys taken by other tenants (a restore
    -- fails on those instead).
    execute format('with l as materialized (select * from %s l where %s)
        select count(*) filter (where not (%s)),
          count(*) filter (where %s and %s),
          count(*) filter (where not (%s) and exists (select from %s o where %s))
        from %s t left join l on %s',
      r.live, r.tenant_pred, v_matched, v_matched, v_differs, v_matched, r.live,
      pitr.join_on(r.pk, 'o', 't'), pitr.target_sql(r), pitr.join_on(r.pk, 'l', 't'))
    into v_ins, v_upd, v_conf;
    if p_strategy = 'overwrite' then
      execute format('select count(*) from %s l where %s and not exists (select from %s s where %s and %s)',
        r.live, r.tenant_pred, r.store, r.members,
        (select string_agg(format('l.%s = %s', c, e), ' and ')
           from unnest(r.cols, r.exprs) x(c, e) where c = any (r.pk)))
      into v_del;
    end if;
    return query select v_ins, v_upd, v_del, v_rows - v_ins - v_upd, v_conf;
    return;
  end if;
  -- The tenant's rows are read once and hashed: probing the key index once per snapshot row
  -- costs several times more for a whole tenant.
  execute format('drop table if exists %s; create temp table %s on commit drop as
      with l as materialized (select l.ctid as pitr_lctid, l.* from %s l where %s)
      select row_number() over () as n, t.pitr_ctid as sctid, l.pitr_lctid as lctid,
        not (%s) as ins
      from %s t left join l on %s
      where not (%s) or %s',
    r.writes, r.writes, r.live, r.tenant_pred, v_matched, pitr.target_sql(r),
    pitr.join_on(r.pk, 'l', 't'), v_matched, v_differs);
  -- Batches select their rows by n: without an index each would scan the whole write set.
  execute format('create index on %s (n); analyze %s', r.writes, r.writes);
  execute format('select count(*) filter (where ins), count(*) filter (where not ins) from %s',
    r.writes) into v_ins, v_upd;
  if p_strategy = 'overwrite' then
    execute format('drop table if exists %s; create temp table %s on commit drop as
        select l.* from %s l where %s and not exists (select from %s s where %s and %s)',
      r.deletes, r.deletes, r.live, r.tenant_pred, r.store, r.members,
      (select string_agg(format('l.%s = %s', c, e), ' and ')
         from unnest(r.cols, r.exprs) x(c, e) where c = any (r.pk)));
    get diagnostics v_del = row_count;
    -- Its size known, the delete joins it with the tenant's rows the right way round.
    execute format('analyze %s', r.deletes);
  end if;
  return query select v_ins, v_upd, v_del, v_rows - v_ins - v_upd, v_conf;
end
$$;

-- Overwrite, step 1: deletes the tenant's rows that table_diff found missing from the snapshot.
-- The deleted rows stay in restore_sql.deletes until commit for the foreign-key check.
create function pitr.restore_delete(p_snapshot_table bigint) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_rows bigint;
begin
  execute format('delete from %s l using %s d where %s and %s',
    r.live, r.deletes, pitr.join_on(r.pk, 'l', 'd'), r.tenant_pred);
  get diagnostics v_rows = row_count;
  return v_rows;
end
$$;

-- Step 2, one batch (rows p_from <= n < p_to of table_diff's write set): updates the tenant's
-- rows that differ from the snapshot and inserts the snapshot rows that are missing. Rows equal
-- to the snapshot are not in the write set and are not written. A key held by another tenant's
-- row makes the insert fail: the restore never takes or skips another tenant's row.
-- The update of one batch, joining the batch's store rows with the live rows they replace, both
-- fetched by TID scan. Index scans are off here so that the planner cannot drive the join from
-- the tenant's rows by the tenant index: rows written since the last ANALYZE are estimated at one
-- row, and that plan rescanned the batch for each of them (minutes for a 100k-row tenant). The
-- key and tenant are checked again on every row, so a reused TID can never reach another row.
create function pitr.restore_update(p_snapshot_table bigint, p_store tid[], p_live tid[])
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_indexscan = off
set enable_bitmapscan = off set enable_nestloop = off
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v bigint;
begin
  execute format('update %s l set (%s) = row(%s) from %s t where l.ctid = any ($2) and %s and %s',
    r.live, array_to_string(r.upd, ', '),
    (select string_agg('t.' || c, ', ') from unnest(r.upd) c),
    pitr.target_sql(r, '$1'), pitr.join_on(r.pk, 'l', 't'), r.tenant_pred)
  using p_store, p_live;
  get diagnostics v = row_count;
  return v;
end
$$;

create function pitr.restore_write(p_snapshot_table bigint, p_from bigint, p_to bigint)
returns table (updated bigint, inserted bigint)
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_updates tid[];
  v_live tid[];
  v_inserts tid[];
  v_upd bigint := 0;
  v_ins bigint := 0;
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
    execute format('insert into %s (%s) %s select %s from %s t',
      r.live, array_to_string(r.cols, ', '),
      case when r.overriding then 'overriding system value' else '' end,
      (select string_agg('t.' || c, ', ') from unnest(r.cols) c),
      pitr.target_sql(r, '$1'))
    using v_inserts;
    get diagnostics v_ins = row_count;
  end if;
  return query select v_upd, v_ins;
end
$$;

-- Moves each serial or identity sequence of the table past the largest value now in it. Only
-- forward: a sequence never goes back, whatever other tenants have taken.
create function pitr.move_sequences(p_relid oid) returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_col record;
  v_seq text;
  v_max bigint;
  v_moved integer := 0;
begin
  for v_col in select c.name from pitr.live_columns(p_relid) c
      where c.type in ('smallint', 'integer', 'bigint') loop
    v_seq := pg_get_serial_sequence(p_relid::regclass::text, v_col.name);
    continue when v_seq is null;
    execute format('select max(%I)::bigint from %s', v_col.name, p_relid::regclass) into v_max;
    continue when v_max is null;
    execute format(
      'select setval(%L, %s) from %s where last_value < %s or not is_called',
      v_seq, v_max, v_seq, v_max);
    v_moved := v_moved + 1;
  end loop;
  return v_moved;
end
$$;

-- Before commit: the tenant's rows equal the snapshot's (overwrite), or every snapshot key is
-- present (merge). When every column is restored as stored, the live rows are compared with the
-- checksum recorded when the snapshot was taken, so a store altered since cannot pass either.
create function pitr.verify_table(p_snapshot_table bigint, p_strategy text)
returns table (ok boolean, live_digest text, expected_digest text)
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB' as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_live text;
  v_expected text;
  v_missing bigint;
begin
  if p_strategy = 'overwrite' then
    v_live := pitr.digest(format('%s l where %s', r.live, r.tenant_pred),
      array(select 'l.' || c from unnest(r.cols) c), r.by_text);
    v_expected := case when r.exact then r.checksum
      else pitr.digest(pitr.target_sql(r) || ' t', array(select 't.' || c from unnest(r.cols) c),
        r.by_text) end;
    return query select v_live = v_expected, v_live, v_expected;
  else
    execute format('select count(*) from %s t where not exists (select from %s l where %s and %s)',
      pitr.target_sql(r), r.live, pitr.join_on(r.pk, 'l', 't'), r.tenant_pred)
    into v_missing;
    return query select v_missing = 0, (v_missing || ' missing')::text, '0 missing'::text;
  end if;
end
$$;
