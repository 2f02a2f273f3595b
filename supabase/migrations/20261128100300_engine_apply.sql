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
  live_exprs text[], -- the live value of each, on alias l, in the store's type (for the digest)
  pk text[],         -- quoted primary key columns of the live table; none: rows are a multiset
  upd text[],        -- columns an UPDATE may set: cols less the key and GENERATED ALWAYS identity
  reinsert text[],   -- columns whose change makes a row deleted and inserted again (table_diff)
  overriding boolean,-- a GENERATED ALWAYS identity column is written
  exact boolean,     -- every snapshot column is restored as it is: the recorded checksum applies
  checksum text,     -- the snapshot table's recorded checksum
  writes text,       -- pg_temp table of the store rows a restore writes (see table_diff)
  deletes text,      -- pg_temp table of the live rows a restore deletes or re-inserts
  selection text     -- pg_temp table of the rows a selective restore chose (see pitr.select_rows)
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

-- The snapshot's rows a restore writes (its write set), fetched by TID: as many as changed,
-- never a pass over the tenant's rows.
create function pitr.written_sql(r pitr.restore_sql) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select pitr.target_sql(r, format('array(select sctid from %s)', r.writes))
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

-- A table without a primary key is a multiset: the snapshot's rows (alias t) and the tenant's
-- rows (alias l) pair up by hash and by number among the rows of that hash in binary-image order,
-- so identical rows pair one for one. Yields the unpaired (or paired but unequal) rows: sctid, a
-- snapshot row to insert; (ltoid, lctid), a live row to delete (a ctid is unique only within one
-- partition, so the partition's tableoid goes with it).
create function pitr.multiset_diff_sql(r pitr.restore_sql) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select format('select t.pitr_ctid as sctid, l.pitr_ltoid as ltoid, l.pitr_lctid as lctid,
        coalesce(t.pitr_h, l.pitr_h) as h, coalesce(t.pitr_n, l.pitr_n) as n
      from (select t.*, row_number() over (partition by t.pitr_h
              order by %1$s using operator(pg_catalog.*<)) as pitr_n
            from (select t.*, hashtextextended(%1$s::text, 0) as pitr_h from %2$s t) t) t
      full join (select l.*, row_number() over (partition by l.pitr_h
              order by %3$s using operator(pg_catalog.*<)) as pitr_n
            from (select l.tableoid as pitr_ltoid, l.ctid as pitr_lctid, l.*,
                hashtextextended(%3$s::text, 0) as pitr_h
              from %4$s l where %5$s) l) l
        on t.pitr_h = l.pitr_h and t.pitr_n = l.pitr_n
      where t.pitr_n is null or l.pitr_n is null or record_image_ne(%1$s, %3$s)',
    pitr.row_of(r.cols, 't'), pitr.target_sql(r), pitr.row_of(r.cols, 'l'), r.live,
    r.tenant_pred)
$$;

-- What restoring one table would do, in one pass over the snapshot's rows and the tenant's rows,
-- matched by primary key (or as multisets, without one). Rows compare by their binary image
-- (record_image_ne, as REFRESH MATERIALIZED VIEW CONCURRENTLY does), which is stricter than =
-- (1.0 and 1.00 differ). conflicts: snapshot rows to insert whose key now belongs to another
-- tenant's row (the insert would fail).
-- With p_materialize (inside a restore's transaction), the rows to write and to delete are kept
-- in temporary tables (restore_sql.writes, .deletes) for restore_delete and restore_write. A row
-- whose values in a unique index or exclusion constraint change is not updated in place but
-- deleted with the deletes and inserted again with the inserts: PostgreSQL checks such keys row
-- by row, so two rows that swap their values (or any permutation) could not be updated one after
-- the other. Its old image in .deletes also tells the FK checks which referenced keys went away.
-- A GENERATED ALWAYS identity value that differs is restored the same way (only an INSERT can
-- write one, with OVERRIDING SYSTEM VALUE), and so is a key equal to the snapshot's but not
-- identical (1.0 against 1.00: the rows match, but an UPDATE never sets the key).
create function pitr.table_diff(p_snapshot_table bigint, p_strategy text,
  p_materialize boolean default false)
returns table (ins bigint, upd bigint, del bigint, unchanged bigint, conflicts bigint)
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_rows bigint := (select row_count from pitr.backup_snapshot_tables where id = p_snapshot_table);
  v_matched text := format('l.%s is not null', r.pk[1]);
  v_differs text := format('record_image_ne(%s, %s)', pitr.row_of(r.cols, 'l'), pitr.row_of(r.cols, 't'));
  v_reins text := 'false';
  -- A selective restore's chosen keys, when it chose some (not the whole table).
  v_chosen_t text := 'true';
  v_chosen_l text := 'true';
  v_ins bigint := 0; v_upd bigint := 0; v_del bigint := 0; v_conf bigint := 0;
begin
  if cardinality(r.pk) = 0 then
    return query select * from pitr.table_diff_multiset(p_snapshot_table, p_strategy, p_materialize);
    return;
  end if;
  if p_materialize and to_regclass(r.selection) is not null then
    v_chosen_t := format('exists (select from %s s where %s)', r.selection,
      pitr.join_on(r.pk, 's', 't'));
    v_chosen_l := format('exists (select from %s s where %s)', r.selection,
      pitr.join_on(r.pk, 's', 'l'));
  end if;
  if p_strategy = 'merge' then
    v_differs := 'false';
  elsif cardinality(r.reinsert) > 0 then
    v_reins := format('record_image_ne(%s, %s)', pitr.row_of(r.reinsert, 'l'),
      pitr.row_of(r.reinsert, 't'));
  end if;
  if not p_materialize then
    -- A preview counts in one pass over both sides, and also counts the keys taken by other
    -- tenants (a restore fails on those instead).
    execute format('with l as (select * from %1$s l where %2$s)
        select count(*) filter (where t.pitr_ctid is not null and not (%3$s)),
          count(*) filter (where t.pitr_ctid is not null and %3$s and %4$s),
          count(*) filter (where t.pitr_ctid is null),
          count(*) filter (where t.pitr_ctid is not null and not (%3$s)
            and exists (select from %1$s o where %5$s))
        from %6$s t full join l on %7$s',
      r.live, r.tenant_pred, v_matched, v_differs, pitr.join_on(r.pk, 'o', 't'),
      pitr.target_sql(r), pitr.join_on(r.pk, 'l', 't'))
    into v_ins, v_upd, v_del, v_conf;
    if p_strategy = 'merge' then
      v_del := 0;
    end if;
    return query select v_ins, v_upd, v_del, v_rows - v_ins - v_upd, v_conf;
    return;
  end if;
  -- One pass over the snapshot's rows and the tenant's rows (one hash join: probing the key index
  -- once per snapshot row costs several times more for a whole tenant, and materializing either
  -- side first twice as much) finds every row to write and to delete; the rows themselves are
  -- then fetched by TID, as many as changed.
  -- lhash: a changed live row's hash in the store's types, for the verification (verify_table).
  execute format('drop table if exists pg_temp.pitr_pairs; create temp table pitr_pairs on commit drop as
      with l as (select l.tableoid as pitr_ltoid, l.ctid as pitr_lctid, l.* from %1$s l where %2$s)
      select t.pitr_ctid as sctid, l.pitr_ltoid as ltoid, l.pitr_lctid as lctid,
        not (%3$s) or (%4$s) as ins, (%3$s) and (%4$s) as reins,
        case when %3$s then %5$s end as lhash
      from %6$s t full join l on %7$s
      where (t.pitr_ctid is null or not (%3$s) or %8$s)
        and (t.pitr_ctid is null or %9$s) and (not (%3$s) or %10$s)',
    r.live, r.tenant_pred, v_matched, v_reins,
    case when r.exact then pitr.row_hash_sql(r.live_exprs, r.by_text) else 'null::bigint' end,
    pitr.target_sql(r), pitr.join_on(r.pk, 'l', 't'), v_differs, v_chosen_t, v_chosen_l);
  execute format('drop table if exists %1$s; create temp table %1$s on commit drop as
      select row_number() over () as n, sctid, ltoid, lctid, ins, reins, lhash
      from pg_temp.pitr_pairs where sctid is not null', r.writes);
  -- Batches select their rows by n: without an index each would scan the whole write set.
  execute format('create index on %s (n); analyze %s', r.writes, r.writes);
  execute format('select count(*) filter (where ins and not reins),
      count(*) filter (where not ins or reins) from %s', r.writes) into v_ins, v_upd;
  if p_strategy in ('overwrite', 'selective') then
    -- The rows deleted, and those re-inserted (their old image goes with the deletes).
    execute format('drop table if exists %1$s; create temp table %1$s on commit drop as
        select l.tableoid as pitr_ltoid, l.ctid as pitr_lctid, l.* from %2$s l
        where l.ctid = any (array(select lctid from pg_temp.pitr_pairs where sctid is null or reins))
          and (l.tableoid, l.ctid) in
            (select ltoid, lctid from pg_temp.pitr_pairs where sctid is null or reins)
          and %3$s',
      r.deletes, r.live, r.tenant_pred);
    execute format('select count(*) from pg_temp.pitr_pairs where sctid is null') into v_del;
    -- Its size known, the delete joins it with the tenant's rows the right way round.
    execute format('analyze %s', r.deletes);
  end if;
  drop table pg_temp.pitr_pairs;
  return query select v_ins, v_upd, v_del, v_rows - v_ins - v_upd, v_conf;
end
$$;

-- table_diff for a table without a primary key (see pitr.multiset_diff_sql): no row is updated;
-- the snapshot's surplus rows are inserted and the tenant's surplus rows deleted (overwrite).
create function pitr.table_diff_multiset(p_snapshot_table bigint, p_strategy text,
  p_materialize boolean)
returns table (ins bigint, upd bigint, del bigint, unchanged bigint, conflicts bigint)
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_rows bigint := (select row_count from pitr.backup_snapshot_tables where id = p_snapshot_table);
  v_ins bigint := 0;
  v_del bigint := 0;
begin
  if not p_materialize then
    execute format('select count(sctid), count(lctid) from (%s) d', pitr.multiset_diff_sql(r))
    into v_ins, v_del;
  else
    execute format('drop table if exists pg_temp.pitr_pairs;
        create temp table pitr_pairs on commit drop as %s', pitr.multiset_diff_sql(r));
    -- A selective restore keeps only the rows it chose (by side, hash and number).
    if to_regclass(r.selection) is not null then
      execute format('update pg_temp.pitr_pairs p set
          sctid = case when exists (select from %1$s s where s.side = ''i'' and s.h = p.h
            and s.n = p.n) then p.sctid end,
          lctid = case when exists (select from %1$s s where s.side = ''d'' and s.h = p.h
            and s.n = p.n) then p.lctid end', r.selection);
    end if;
    execute format('drop table if exists %1$s; create temp table %1$s on commit drop as
        select row_number() over () as n, sctid, null::oid as ltoid, null::tid as lctid, true as ins,
          false as reins
        from pg_temp.pitr_pairs where sctid is not null', r.writes);
    execute format('create index on %s (n); analyze %s', r.writes, r.writes);
    execute format('select count(*) from %s', r.writes) into v_ins;
    if p_strategy in ('overwrite', 'selective') then
      execute format('drop table if exists %1$s; create temp table %1$s on commit drop as
          select l.tableoid as pitr_ltoid, l.ctid as pitr_lctid, l.* from %2$s l
          where l.ctid = any (array(select lctid from pg_temp.pitr_pairs where lctid is not null))
            and (l.tableoid, l.ctid) in (select ltoid, lctid from pg_temp.pitr_pairs) and %3$s',
        r.deletes, r.live, r.tenant_pred);
      get diagnostics v_del = row_count;
    end if;
    drop table pg_temp.pitr_pairs;
  end if;
  if p_strategy = 'merge' then
    v_del := 0;
  end if;
  return query select v_ins, 0::bigint, v_del, v_rows - v_ins, 0::bigint;
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
  -- By key, or for a multiset by the row's partition and ctid (read in this transaction, and
  -- checked against the tenant again).
  execute format('delete from %s l using %s d where %s and %s',
    r.live, r.deletes,
    case when cardinality(r.pk) > 0 then pitr.join_on(r.pk, 'l', 'd')
      else 'l.tableoid = d.pitr_ltoid and l.ctid = d.pitr_lctid' end,
    r.tenant_pred);
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

-- The serial and identity sequences of a restored table that are behind the largest value the
-- restore writes into their column, with that value. Called inside the restore's transaction
-- (it reads the write set); pitr.advance_sequence moves each, outside it.
create function pitr.sequences_behind(p_snapshot_table bigint)
returns table (seq text, max_value bigint)
language plpgsql set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_col record;
  v_seq regclass;
  v_max bigint;
  v_last bigint;
begin
  if to_regclass(r.writes) is null then
    return;
  end if;
  for v_col in select c.name from pitr.live_columns(r.relid) c
      where c.type in ('smallint', 'integer', 'bigint') and format('%I', c.name) = any (r.cols) loop
    v_seq := pg_get_serial_sequence(r.live, v_col.name)::regclass;
    continue when v_seq is null;
    execute format('select max(t.%I)::bigint from %s t', v_col.name, pitr.written_sql(r))
    into v_max;
    continue when v_max is null;
    execute format('select last_value from %s', v_seq) into v_last;
    if v_last <= v_max then
      seq := v_seq::text;
      max_value := v_max;
      return next;
    end if;
  end loop;
end
$$;

-- Moves a sequence forward to p_value, never back. Run as a statement of its own outside the
-- restore's transaction, before the restore writes, so that no nextval() of the application
-- hands out a value the restore is about to write. ALTER SEQUENCE (changing nothing) takes the
-- lock that holds other sessions' nextval() until this statement's transaction ends, so the
-- sequence is read and moved as one step; lock_timeout bounds how long nextval() can queue
-- behind it.
create function pitr.advance_sequence(p_seq regclass, p_value bigint) returns boolean
language plpgsql set search_path = pg_catalog, pg_temp set lock_timeout = '2s' as $$
declare
  v_inc bigint := (select seqincrement from pg_sequence where seqrelid = p_seq);
  v_last bigint;
  v_called boolean;
begin
  if v_inc is null or v_inc < 0 then
    return false;
  end if;
  execute format('alter sequence %s increment by %s', p_seq, v_inc);
  execute format('select last_value, is_called from %s', p_seq) into v_last, v_called;
  if v_last < p_value or (v_last = p_value and not v_called) then
    perform setval(p_seq, p_value);
    return true;
  end if;
  return false;
end
$$;

-- A selective restore leaves every row it did not choose as it is, so its result is checked by
-- arithmetic on the order-independent digest: before it writes, the tenant's rows now, less the
-- rows it deletes and the old images of the rows it updates, plus every row it writes; after,
-- the tenant's rows must digest to exactly that. Both sides in today's types. Kept in
-- pg_temp.pitr_expected for verify_table.
create function pitr.selective_expected(p_snapshot_table bigint) returns text
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB'
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_by_text boolean := pitr.hash_by_text(array(select c.type from pitr.live_columns(r.relid) c
    where format('%I', c.name) = any (r.cols)));
  v_hash_l text := pitr.row_hash_sql(array(select 'l.' || c from unnest(r.cols) c), v_by_text);
  v_hash_t text := pitr.row_hash_sql(array(select 't.' || c from unnest(r.cols) c), v_by_text);
  v_n bigint;
  v_s numeric;
  v_expected text;
begin
  execute format('select
      (select count(*) from %1$s l where %2$s)
        - (select count(*) from %3$s l)
        - (select count(*) from %4$s w where not w.ins)
        + (select count(*) from %4$s w),
      (select coalesce(sum(%5$s::numeric), 0) from %1$s l where %2$s)
        - (select coalesce(sum(%5$s::numeric), 0) from %3$s l)
        - (select coalesce(sum(%5$s::numeric), 0) from %1$s l
            where (l.tableoid, l.ctid) in (select ltoid, lctid from %4$s where not ins) and %2$s)
        + (select coalesce(sum(%6$s::numeric), 0) from %7$s t)',
    r.live, r.tenant_pred,
    case when to_regclass(r.deletes) is null then '(select 1 where false)' else r.deletes end,
    r.writes, v_hash_l, v_hash_t, pitr.written_sql(r))
  into v_n, v_s;
  v_expected := v_n || ':' || v_s;
  create temp table if not exists pitr_expected (snapshot_table bigint primary key, digest text)
    on commit drop;
  insert into pg_temp.pitr_expected values (p_snapshot_table, v_expected)
  on conflict (snapshot_table) do update set digest = excluded.digest;
  return v_expected;
end
$$;

-- Verification of an overwrite that hashes only what it touched. The restore's undo snapshot
-- left in the table's head the digest of the tenant's rows before the restore (in the store's
-- types); taking away the rows it deleted or updated (their images before, kept by table_diff)
-- and adding the rows now under every key it wrote or deleted, read back from the live table,
-- gives the digest of the tenant's rows now, which must be the snapshot's recorded checksum. The
-- rows it did not touch were compared with the snapshot by table_diff in this transaction.
create function pitr.verify_written(p_snapshot_table bigint)
returns table (ok boolean, live_digest text, expected_digest text)
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB'
set enable_nestloop = on set enable_hashjoin = off set enable_mergejoin = off
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_st pitr.backup_snapshot_tables := (select x from pitr.backup_snapshot_tables x
    where x.id = p_snapshot_table);
  v_head pitr.backup_store_heads := (select h from pitr.backup_store_heads h
    where h.store_id = v_st.store_id and h.tenant_id = v_st.store_tenant);
  v_hash text := pitr.row_hash_sql(r.live_exprs, r.by_text);
  v_keys text := array_to_string(r.pk, ', ');
  v_deletes text := case when to_regclass(r.deletes) is null then
    format('(select l.* from %s l where false)', r.live) else r.deletes end;
  v_touched bigint;
  v_n bigint;
  v_s numeric;
  v_live text;
begin
  -- Every key the restore wrote or deleted, once each.
  execute format('drop table if exists pg_temp.pitr_touched;
      create temp table pitr_touched on commit drop as
        select %1$s from %2$s t union select %1$s from %3$s;
      analyze pg_temp.pitr_touched', v_keys, pitr.written_sql(r), v_deletes);
  execute 'select count(*) from pg_temp.pitr_touched' into v_touched;
  if v_touched * 5 > greatest(v_head.row_count, v_st.row_count) then
    -- Most of the table was written: one pass over all of it is cheaper than a probe per key.
    v_live := pitr.digest(format('%s l where %s', r.live, r.tenant_pred), r.live_exprs, r.by_text);
    return query select v_live = r.checksum, v_live, r.checksum;
    return;
  end if;
  -- Each touched key is looked up by the live table's key index (nested loops only: the
  -- statistics of rows written in this transaction are not known yet).
  execute format('with removed as (
        select %1$s as h from %2$s l
        union all select lhash from %3$s where not ins),
      now as (
        select %1$s as h from pg_temp.pitr_touched k join %4$s l on %5$s where %6$s)
      select %7$s - (select count(*) from removed) + (select count(*) from now),
        %8$s - (select coalesce(sum(h::numeric), 0) from removed)
          + (select coalesce(sum(h::numeric), 0) from now)',
    v_hash, v_deletes, r.writes, r.live, pitr.join_on(r.pk, 'k', 'l'), r.tenant_pred,
    v_head.row_count, v_head.hash_sum)
  into v_n, v_s;
  v_live := v_n || ':' || v_s;
  return query select v_live = r.checksum, v_live, r.checksum;
end
$$;

-- Before commit: the tenant's rows equal the snapshot's (overwrite), or every snapshot row is
-- present (merge), or the digest selective_expected computed (selective). When every column is restored as stored, the live rows (in the store's types)
-- are compared with the checksum recorded when the snapshot was taken, so a store altered since
-- cannot pass either.
create function pitr.verify_table(p_snapshot_table bigint, p_strategy text,
  p_undone boolean default false)
returns table (ok boolean, live_digest text, expected_digest text)
language plpgsql set search_path = pg_catalog, pg_temp set work_mem = '64MB'
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_by_text boolean;
  v_live text;
  v_expected text;
  v_missing bigint;
begin
  if p_strategy = 'overwrite' and r.exact and cardinality(r.pk) > 0 and p_undone then
    return query select * from pitr.verify_written(p_snapshot_table);
  elsif p_strategy = 'selective' then
    v_by_text := pitr.hash_by_text(array(select c.type from pitr.live_columns(r.relid) c
      where format('%I', c.name) = any (r.cols)));
    v_live := pitr.digest(format('%s l where %s', r.live, r.tenant_pred),
      array(select 'l.' || c from unnest(r.cols) c), v_by_text);
    v_expected := (select digest from pg_temp.pitr_expected where snapshot_table = p_snapshot_table);
    return query select v_live = v_expected, v_live, v_expected;
  elsif p_strategy = 'overwrite' and r.exact then
    v_live := pitr.digest(format('%s l where %s', r.live, r.tenant_pred), r.live_exprs, r.by_text);
    return query select v_live = r.checksum, v_live, r.checksum;
  elsif p_strategy = 'overwrite' then
    -- Columns changed since: both sides in today's types.
    v_by_text := pitr.hash_by_text(array(select c.type from pitr.live_columns(r.relid) c
      where format('%I', c.name) = any (r.cols)));
    v_live := pitr.digest(format('%s l where %s', r.live, r.tenant_pred),
      array(select 'l.' || c from unnest(r.cols) c), v_by_text);
    v_expected := pitr.digest(pitr.target_sql(r) || ' t',
      array(select 't.' || c from unnest(r.cols) c), v_by_text);
    return query select v_live = v_expected, v_live, v_expected;
  elsif cardinality(r.pk) > 0 then
    execute format('select count(*) from %s t where not exists (select from %s l where %s and %s)',
      pitr.target_sql(r), r.live, pitr.join_on(r.pk, 'l', 't'), r.tenant_pred)
    into v_missing;
    return query select v_missing = 0, (v_missing || ' missing')::text, '0 missing'::text;
  else
    execute format('select count(sctid) from (%s) d', pitr.multiset_diff_sql(r)) into v_missing;
    return query select v_missing = 0, (v_missing || ' missing')::text, '0 missing'::text;
  end if;
end
$$;
