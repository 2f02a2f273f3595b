-- A restore's cost for a table the tenant has not written since the snapshot. A restore of ten
-- rows changed in one table of thirty (1,000 rows a table, PostgreSQL 15) took 230-330 ms, most of
-- it in the 29 others: the diff's pass over each (the snapshot's rows read from the store, the live
-- keys joined with them, a temporary table of the pairs) found nothing, and still made the table's
-- write set and delete set, two more temporary tables each dropped again at commit.
--
-- When no live row of the tenant was written since the snapshot (its xmin within the snapshot's
-- horizon) and the tenant has as many rows as the snapshot, the pass would find nothing: the live
-- rows are rows the snapshot read (the assumption the pass already rests on, that a row not
-- written since the snapshot is in it under the same key), so their keys are exactly the
-- snapshot's. A probe for a row written since (it stops at the first) and a count of the tenant's
-- rows, both by its index (pitr.rows_if_unwritten), tell it. Such a table is marked quiet for the
-- transaction (pitr.diff_quiet) and gets no write set or delete set: the restore writes and
-- deletes nothing in it, and its undo and its verification ask whether it wrote anything of
-- pitr.diff_found_nothing, which knows the mark (apply.ts asks the foreign-key check of a written
-- child to subtract no keys of a parent that wrote none). A preview
-- of such a table takes its checksum from the stored hashes alone, as its pass counts rows
-- unchanged since (a plan of 10 rows changed in 1 table of 30: 123-158 ms against 152-170 ms). A
-- selective restore still makes the pass; a table the tenant has more than 10,000 rows in goes
-- straight to it (a table written since pays the probe on top of it).

-- Whether the restore's diff of a table (pitr.table_diff) found the tenant had not written it since
-- the snapshot, in this transaction: the table then has no write set or delete set.
create function pitr.diff_quiet(p_snapshot_table bigint) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp set jit = off as $$
begin
  return coalesce(current_setting('pitr.quiet_' || p_snapshot_table, true), '') = 'on';
end
$$;

-- Whether the restore's diff of a table left nothing to write or delete in it: found quiet (no
-- sets at all), or both its sets empty (a merge has no delete set).
create function pitr.diff_found_nothing(p_snapshot_table bigint) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp set jit = off as $$
declare
  r pitr.restore_sql;
  v_none boolean;
begin
  if pitr.diff_quiet(p_snapshot_table) then
    return true;
  end if;
  r := pitr.restore_sql(p_snapshot_table);
  execute format('select not exists (select from %s)', r.writes) into v_none;
  if v_none and to_regclass(r.deletes) is not null then
    execute format('select not exists (select from %s)', r.deletes) into v_none;
  end if;
  return v_none;
end
$$;

-- The tenant's rows in a live table (p_live, its tenant predicate p_pred) when none of them was
-- written since a snapshot's horizon (p_age, pitr.horizon_age), or -1 when one was: the probe stops
-- at the first such row. One statement, so one view of the rows even where the caller reads
-- committed. By the tenant's index, never a scan: a scan for rows that are not there reads every
-- tenant's (as pitr.tenant_has_rows).
create function pitr.rows_if_unwritten(p_live text, p_pred text, p_age integer) returns bigint
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_seqscan = off set jit = off
as $$
declare
  v_rows bigint;
begin
  execute format('select case when exists (select from %1$s l where %2$s and age(l.xmin) <= %3$s)
      then -1 else (select count(*) from %1$s l where %2$s) end', p_live, p_pred, p_age)
  into v_rows;
  return v_rows;
end
$$;

-- pitr.table_diff (20261129001900_unchanged_tables_skip_empty_sets.sql): the probe and count first,
-- for an overwrite or a merge (the tenant's emptiness from the same count): a quiet table marked
-- without sets, or previewed from its stored hashes; the FK columns read for the pass only;
-- everything else as it was.
create or replace function pitr.table_diff(p_snapshot_table bigint, p_strategy text,
  p_materialize boolean default false)
returns table (ins bigint, upd bigint, del bigint, unchanged bigint, conflicts bigint,
  checksum text)
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
set jit = off
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_rows bigint := (select row_count from pitr.backup_snapshot_tables where id = p_snapshot_table);
  v_age integer;
  v_matched text := format('l.%s is not null', r.pk[1]);
  v_differs text := format('record_image_ne(%s, %s)', pitr.row_of(r.cols, 'l'), pitr.row_of(r.cols, 't'));
  v_reins text := 'false';
  -- A selective restore's chosen keys, when it chose some (not the whole table).
  v_chosen_t text := 'true';
  v_chosen_l text := 'true';
  -- The tenant's live rows compared, and the snapshot's rows compared with them.
  v_live text := format('(select l.tableoid as pitr_ltoid, l.ctid as pitr_lctid, l.* from %s l where %s)',
    r.live, r.tenant_pred);
  v_target text := pitr.target_sql(r);
  -- The restored columns of the table's foreign keys: an updated row whose values in them stay
  -- as they were (keys_kept) needs no FK check, as PostgreSQL's own FK triggers skip it. Read
  -- before the pass only.
  v_fk_cols text[];
  v_empty boolean;
  -- Every column the snapshot stored, as stored (columns dropped since included): the checksum's.
  v_raw text[] := array(select format('s.%I', c ->> 'name') from jsonb_array_elements(
    (select columns from pitr.backup_snapshot_tables where id = p_snapshot_table)) c);
  v_same text := 'false';
  v_old_keys text := '';
  v_sum numeric;
  v_n bigint;
  v_ins bigint := 0; v_upd bigint := 0; v_del bigint := 0; v_conf bigint := 0;
  -- The pass found no row to write or delete: both sets empty, made without statistics.
  v_none boolean := false;
  v_quiet boolean := false;
begin
  -- Set again below if this diff finds the table quiet.
  perform set_config('pitr.quiet_' || p_snapshot_table, '', true);
  if cardinality(r.pk) = 0 then
    return query select m.*, case when not p_materialize then pitr.digest(
        format('%s s where %s', r.store, r.members), v_raw, r.by_text) end
      from pitr.table_diff_multiset(p_snapshot_table, p_strategy, p_materialize) m;
    if p_materialize then
      -- A multiset's write set is all inserts: no row kept its foreign-key values.
      execute format('alter table %s add column keys_kept boolean default false', r.writes);
    end if;
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
  v_age := pitr.horizon_age(p_snapshot_table);
  if v_age is not null then
    -- Live rows written since the snapshot; snapshot rows whose key no unchanged row holds.
    v_live := format('(select l.tableoid as pitr_ltoid, l.ctid as pitr_lctid, l.* from %s l
        where %s and age(l.xmin) <= %s)', r.live, r.tenant_pred, v_age);
    if p_materialize then
      v_target := format('(select t.* from %s t where not exists (select from %s l
          where %s and %s and age(l.xmin) > %s))',
        v_target, r.live, pitr.join_on(r.pk, 'l', 't'), r.tenant_pred, v_age);
    else
      -- The preview keeps every snapshot row, for the checksum: those whose key an unchanged row
      -- holds are marked, and counted with their stored hash.
      v_old_keys := format('left join (select %s from %s l where %s and age(l.xmin) > %s) o on %s',
        (select string_agg('l.' || k, ', ') from unnest(r.pk) k), r.live, r.tenant_pred, v_age,
        pitr.join_on(r.pk, 'o', 't'));
      v_same := format('o.%s is not null', r.pk[1]);
    end if;
  end if;
  if v_age is not null and v_rows <= 10000 and v_chosen_t = 'true'
      and p_strategy in ('overwrite', 'merge') then
    -- A table the tenant has not written since the snapshot: every live row is one the snapshot
    -- read (the pass below trusts the same), so when they are as many as the snapshot's rows, their
    -- keys are the snapshot's and the pass would find nothing. One probe and one count tell it
    -- (and whether the tenant has rows), instead of the pass, which also reads the snapshot's rows
    -- and makes temporary tables. A table that was written pays the probe on top of the pass:
    -- asked only where the tenant has few rows, it costs less than the pass's fixed part.
    v_n := pitr.rows_if_unwritten(r.live, r.tenant_pred, v_age);
    v_quiet := v_n = v_rows;
  end if;
  if v_quiet and not p_materialize then
    -- A preview of a table the tenant has not written since the snapshot (as for a restore,
    -- below): nothing would change, and the checksum is what the pass would count for rows
    -- unchanged since, the hashes stored beside them.
    execute format('select count(*), coalesce(sum(s.pitr_hash::numeric), 0) from %s s where %s',
      r.store, r.members) into v_n, v_sum;
    return query select 0::bigint, 0::bigint, 0::bigint, v_rows, 0::bigint,
      v_n::text || ':' || v_sum::text;
    return;
  end if;
  if not p_materialize then
    -- A preview counts in one pass over both sides, and also counts the keys taken by other
    -- tenants (a restore fails on those instead). The same pass recomputes the snapshot's
    -- checksum (plan.ts compares it with the recorded one): each row the restore would write is
    -- hashed from its stored values; a row whose live row is unchanged since the snapshot, which
    -- the restore leaves as it is, counts with the hash stored beside it. This replaces a second
    -- pass over the snapshot (pitr.validate_table's digest, still what validate runs).
    execute format('with l as (select * from %1$s l)
        select count(*) filter (where t.pitr_ctid is not null and not t.pitr_same and not (%2$s)),
          count(*) filter (where t.pitr_ctid is not null and %2$s and %3$s),
          count(*) filter (where t.pitr_ctid is null),
          count(*) filter (where t.pitr_ctid is not null and not t.pitr_same and not (%2$s)
            and exists (select from %4$s o where %5$s)),
          count(t.pitr_ctid),
          coalesce(sum((case when t.pitr_ctid is null then null when t.pitr_same
            then t.pitr_stored else %6$s end)::numeric), 0)
        from (select t.*, %7$s as pitr_same from (select s.ctid as pitr_ctid, %8$s,
                s.pitr_hash as pitr_stored, %9$s from %10$s s where %11$s) t %12$s) t
          full join l on %13$s',
      v_live, v_matched, v_differs, r.live, pitr.join_on(r.pk, 'o', 't'),
      pitr.row_hash_sql(array(select format('t.pitr_r%s', i) from generate_subscripts(v_raw, 1) i),
        r.by_text),
      v_same,
      (select string_agg(format('%s as %s', e, c), ', ') from unnest(r.exprs, r.cols) x(e, c)),
      (select string_agg(format('%s as pitr_r%s', c, i), ', ')
       from unnest(v_raw) with ordinality x(c, i)),
      r.store, r.members, v_old_keys, pitr.join_on(r.pk, 'l', 't'))
    into v_ins, v_upd, v_del, v_conf, v_n, v_sum;
    if p_strategy = 'merge' then
      v_del := 0;
    end if;
    return query select v_ins, v_upd, v_del, v_rows - v_ins - v_upd, v_conf,
      v_n::text || ':' || v_sum::text;
    return;
  end if;
  -- The probe's count, where it was asked, says whether the tenant has rows.
  v_empty := case when v_n is null then not pitr.tenant_has_rows(p_snapshot_table) else v_n = 0 end;
  if v_quiet then
    -- No write set or delete set: the calls that would read them ask pitr.diff_found_nothing
    -- first, and the restore makes no other for this table (it writes and deletes nothing in it).
    -- Sets left by an earlier diff of the table in this transaction go.
    execute format('drop table if exists %s, %s', r.writes, r.deletes);
    perform set_config('pitr.quiet_' || p_snapshot_table, 'on', true);
    return query select 0::bigint, 0::bigint, 0::bigint, v_rows, 0::bigint, null::text;
    return;
  elsif v_empty then
    -- Nothing to compare with: every snapshot row (or every chosen one) is inserted. Only the
    -- TIDs are written; the other columns are the same on every row, added as defaults (no
    -- rewrite), and the write set needs no statistics (every later statement reads all of it, or
    -- a batch by its index). For 100,000 rows: 115 ms instead of 270 ms on PostgreSQL 15.
    execute format('drop table if exists %s', r.writes);
    execute format('create temp table %s on commit drop as
        select row_number() over () as n, t.pitr_ctid as sctid from %s t where %s',
      r.writes, pitr.target_sql(r), v_chosen_t);
    get diagnostics v_ins = row_count;
    execute format('alter table %s add column ltoid oid, add column lctid tid,
        add column ins boolean default true, add column reins boolean default false,
        add column lhash bigint, add column keys_kept boolean default false', r.writes);
    execute format('create index on %s (n)', r.writes);
  else
    -- One pass over the snapshot's rows and the tenant's rows (one hash join: probing the key
    -- index once per snapshot row costs several times more for a whole tenant, and materializing
    -- either side first twice as much) finds every row to write and to delete; the rows
    -- themselves are then fetched by TID, as many as changed.
    -- lhash: a changed live row's hash in the store's types, for the verification (verify_table).
    v_fk_cols := array(select c from unnest(pitr.fk_child_columns(r.relid)) c where c = any (r.cols));
    execute format('drop table if exists pg_temp.pitr_pairs; create temp table pitr_pairs on commit drop as
        with l as (select * from %1$s l)
        select t.pitr_ctid as sctid, l.pitr_ltoid as ltoid, l.pitr_lctid as lctid,
          not (%2$s) or (%3$s) as ins, (%2$s) and (%3$s) as reins,
          case when %2$s then %4$s end as lhash,
          (%2$s) and not (%3$s) and %10$s as keys_kept
        from %5$s t full join l on %6$s
        where (t.pitr_ctid is null or not (%2$s) or %7$s)
          and (t.pitr_ctid is null or %8$s) and (not (%2$s) or %9$s)',
      v_live, v_matched, v_reins,
      case when r.exact then pitr.row_hash_sql(r.live_exprs, r.by_text) else 'null::bigint' end,
      v_target, pitr.join_on(r.pk, 'l', 't'), v_differs, v_chosen_t, v_chosen_l,
      case when cardinality(v_fk_cols) = 0 then 'true' else format('not record_image_ne(%s, %s)',
        pitr.row_of(v_fk_cols, 'l'), pitr.row_of(v_fk_cols, 't')) end);
    execute 'select not exists (select from pg_temp.pitr_pairs)' into v_none;
    execute format('drop table if exists %1$s; create temp table %1$s on commit drop as
        select row_number() over () as n, sctid, ltoid, lctid, ins, reins, lhash, keys_kept
        from pg_temp.pitr_pairs where sctid is not null', r.writes);
    if not v_none then
      -- Batches select their rows by n: without an index each would scan the whole write set.
      execute format('create index on %s (n); analyze %s', r.writes, r.writes);
      execute format('select count(*) filter (where ins and not reins),
          count(*) filter (where not ins or reins) from %s', r.writes) into v_ins, v_upd;
    end if;
  end if;
  if p_strategy in ('overwrite', 'selective') then
    -- The rows deleted, and those re-inserted (their old image goes with the deletes), fetched by
    -- TID; the tenant is checked on each row but never through its index (see
    -- 20261129000200_tid_fetch_without_tenant_index.sql).
    if v_empty or v_none then
      execute format('drop table if exists %1$s; create temp table %1$s on commit drop as
          select l.tableoid as pitr_ltoid, l.ctid as pitr_lctid, l.* from %2$s l where false',
        r.deletes, r.live);
    else
      execute format('drop table if exists %1$s; create temp table %1$s on commit drop as
          select l.tableoid as pitr_ltoid, l.ctid as pitr_lctid, l.* from %2$s l
          where l.ctid = any (array(select lctid from pg_temp.pitr_pairs where sctid is null or reins))
            and (l.tableoid, l.ctid) in
              (select ltoid, lctid from pg_temp.pitr_pairs where sctid is null or reins)
            and (%3$s) is true',
        r.deletes, r.live, r.tenant_pred);
      execute format('select count(*) from pg_temp.pitr_pairs where sctid is null') into v_del;
      -- Its size known, the delete joins it with the tenant's rows the right way round.
      execute format('analyze %s', r.deletes);
    end if;
  end if;
  drop table if exists pg_temp.pitr_pairs;
  return query select v_ins, v_upd, v_del, v_rows - v_ins - v_upd, v_conf, null::text;
end
$$;


-- pitr.undo_from_diff (20261129001900_unchanged_tables_skip_empty_sets.sql): whether anything was
-- written or deleted asked of pitr.diff_found_nothing, which knows a quiet table; everything else
-- as it was.
create or replace function pitr.undo_from_diff(p_undo uuid, p_position integer, p_snapshot_table bigint)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set enable_nestloop = off set jit = off
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_st pitr.backup_snapshot_tables := (select x from pitr.backup_snapshot_tables x
    where x.id = p_snapshot_table);
  v_store pitr.backup_stores := (select x from pitr.backup_stores x where x.id = v_st.store_id);
  v_undo public.backup_snapshots := (select x from public.backup_snapshots x where x.id = p_undo);
  v_changed text := format('(select pitr_ltoid as toid, pitr_lctid as tid from %s
      union all select ltoid, lctid from %s where not ins)', r.deletes, r.writes);
  v_added_n bigint;
  v_added_s numeric;
  v_closed_n bigint;
  v_closed_s numeric;
  v_head pitr.backup_store_heads;
  v_id bigint;
  v_none boolean;
begin
  v_none := pitr.diff_found_nothing(p_snapshot_table);
  if v_none then
    -- Nothing written or deleted in this table: no version to add or close, and the write set
    -- stays as it is (empty).
    v_added_n := 0; v_added_s := 0; v_closed_n := 0; v_closed_s := 0;
  else
    execute format('drop table if exists pg_temp.pitr_moved; create temp table pitr_moved on commit drop as
        with added as (
          insert into %1$s (%2$s, pitr_tenant, pitr_from, pitr_hash)
          select %3$s, %4$L, %5$s, %6$s from %7$s l
          where l.ctid = any (array(select tid from %8$s c)) and (l.tableoid, l.ctid) in
            (select toid, tid from %8$s c) and (%9$s) is true
          returning pitr_hash),
        closed as (
          update %1$s s set pitr_to = %5$s from %10$s w
          where s.ctid = any (array(select sctid from %10$s)) and s.ctid = w.sctid
          returning w.n, s.ctid as new_ctid, s.pitr_hash)
        select n, new_ctid, pitr_hash, false as added from closed
        union all select null, null, pitr_hash, true from added',
      r.store, array_to_string(r.cols, ', '), array_to_string(r.live_exprs, ', '),
      v_st.store_tenant, v_undo.seq, pitr.row_hash_sql(r.live_exprs, r.by_text), r.live,
      v_changed, r.tenant_pred, r.writes);
    select count(*) filter (where added), coalesce(sum(pitr_hash::numeric) filter (where added), 0),
      count(*) filter (where not added), coalesce(sum(pitr_hash::numeric) filter (where not added), 0)
    into v_added_n, v_added_s, v_closed_n, v_closed_s
    from pg_temp.pitr_moved;
    -- The write set follows the versions to where the update moved them: built again in one pass,
    -- which costs a fraction of updating every one of its rows.
    execute format('create temp table pitr_rewritten on commit drop as
        select w.n, coalesce(m.new_ctid, w.sctid) as sctid, w.ltoid, w.lctid, w.ins, w.reins, w.lhash,
          w.keys_kept
        from %1$s w left join pg_temp.pitr_moved m on m.n = w.n;
      drop table %1$s;
      alter table pg_temp.pitr_rewritten rename to %2$I;
      create index on %1$s (n);
      analyze %1$s;
      drop table pg_temp.pitr_moved', r.writes, 'pitr_write_' || p_snapshot_table);
  end if;
  update pitr.backup_store_heads h
  set row_count = h.row_count + v_added_n - v_closed_n,
    hash_sum = h.hash_sum + v_added_s - v_closed_s, head_seq = v_undo.seq
  where h.store_id = v_st.store_id and h.tenant_id = v_st.store_tenant
  returning * into v_head;
  insert into pitr.backup_snapshot_tables (snapshot_id, tenant_id, store_tenant, position,
    table_schema, table_name, tenant_column, store_id, store_table, seq, columns, primary_key,
    row_count, checksum)
  values (p_undo, v_undo.tenant_id, v_st.store_tenant, p_position, v_st.table_schema,
    v_st.table_name, v_st.tenant_column, v_st.store_id, v_st.store_table, v_undo.seq,
    v_store.columns, pitr.primary_key_of(r.relid), v_head.row_count,
    v_head.row_count || ':' || v_head.hash_sum)
  returning id into v_id;
  return v_id;
end
$$;


-- pitr.verify_written (20261129001900_unchanged_tables_skip_empty_sets.sql): the same.
create or replace function pitr.verify_written(p_snapshot_table bigint)
returns table (ok boolean, live_digest text, expected_digest text)
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB'
set enable_nestloop = on set enable_hashjoin = off set enable_mergejoin = off set jit = off
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
  v_none boolean;
begin
  v_none := pitr.diff_found_nothing(p_snapshot_table);
  if v_none then
    -- Nothing written or deleted: the sum below with no row removed and none added, without the
    -- temporary table of touched keys and its statistics.
    v_live := v_head.row_count || ':' || v_head.hash_sum;
    return query select v_live = r.checksum, v_live, r.checksum;
    return;
  end if;
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
        select %1$s as h from pg_temp.pitr_touched k join %4$s l on %5$s where (%6$s) is true)
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


revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
