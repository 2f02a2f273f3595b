-- A restore's fixed cost for each table it leaves as it is. A restore of ten rows changed in one
-- table of a tenant's thirty (1,000 rows a table, PostgreSQL 15) took 0.9-1.2 s, about 30 ms a
-- table, nearly all of it in the 29 tables where the diff found nothing to write or delete: the
-- undo made a temporary table of the versions it moved and rebuilt the write set with its index
-- and statistics, the verification a temporary table of the keys touched with its statistics,
-- every one of them empty; the diff gave its empty write set an index and statistics and read
-- the tenant's rows again for its empty delete set; and each table's diff planned
-- pitr.fk_child_columns again. The undo and the verification now ask first whether the table's
-- write set or delete set holds a row, and when neither does go straight to what the full path
-- computes from empty sets (the head's count and sum); the diff makes empty sets as such. apply.ts
-- no longer calls, for such tables, the functions that read only those sets (the deletes,
-- sequences, deferred keys and the foreign-key checks of their side).

-- pitr.undo_from_diff (20261129000200_tid_fetch_without_tenant_index.sql): with nothing written
-- or deleted the undo's table is the head as it is; everything else as it was.
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
  execute format('select not exists (select from %s w) and not exists (select from %s d)',
    r.writes, r.deletes) into v_none;
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

-- pitr.verify_written (20261129000200_tid_fetch_without_tenant_index.sql): with nothing written or
-- deleted the live digest is the head's count and sum (the undo's table: the rows as they were,
-- none changed); everything else as it was.
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
  execute format('select not exists (select from %s w) and not exists (select from %s d)',
    r.writes, v_deletes) into v_none;
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


-- pitr.table_diff (20261129001300_plan_checksum_snapshot_rows.sql): when its pass finds no row to
-- write or delete (the table is as the snapshot has it), the write set gets no index, statistics
-- or counts and the delete set is made empty without reading the tenant's rows again; everything
-- else as it was.
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
  -- as they were (keys_kept) needs no FK check, as PostgreSQL's own FK triggers skip it.
  v_fk_cols text[] := array(select c from unnest(pitr.fk_child_columns(r.relid)) c
    where c = any (r.cols));
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
begin
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
  v_empty := not pitr.tenant_has_rows(p_snapshot_table);
  if v_empty then
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

-- pitr.fk_child_columns (20261129000000_diff_since_snapshot.sql) as PL/pgSQL, as the lookups of
-- 20261129001700_catalog_lookups_planned_once.sql: a SQL function with SET clauses is planned
-- again at every call, about 1 ms for this one (its view reads six catalogs), and pitr.table_diff
-- calls it once for every table of every plan and restore. The same query.
create or replace function pitr.fk_child_columns(p_relid oid) returns text[]
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on set jit = off
as $$
begin
  return (select coalesce(array_agg(distinct format('%I', c)), '{}') from pitr.fk_edges e,
    unnest(e.child_columns) c where e.child_relid = p_relid);
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
