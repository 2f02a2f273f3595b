-- A restore's diff of a table the tenant has more than 10,000 rows in and has not written since the
-- snapshot. 20261129002000_quiet_tables_skip_the_pass.sql asks a probe (pitr.rows_if_unwritten)
-- before the pass only where the tenant has at most 10,000 rows: a table that was written pays the
-- probe on top of the pass, and the probe reads most of the tenant's rows when the rows written
-- since lie at the end of them, as rows inserted and rows moved by an update usually do (20 ms for
-- the 4,000 of 100,000 written by deno task bench's drift, embedded PostgreSQL 17). A larger table
-- went straight to the pass, which reads every one of the snapshot's rows from the store and the
-- tenant's live rows unchanged since, to find nothing: for a tenant of 30 tables of 20,000 rows
-- and a few rows changed in one, 29 passes made most of the restore.
--
-- The pass itself now asks the same two facts first, in its own statement (one view of the rows):
-- whether the tenant wrote a row since, from the rows written since that the pass reads anyway,
-- and, only when it did not, whether it has as many rows as the snapshot (pitr.tenant_row_count,
-- by the tenant's index). When both say the table is as the snapshot left it, the snapshot's rows
-- are never read (a one-time filter over that side of the pass); a table that was written pays
-- nothing more. The table still gets its empty write set and delete set (a few milliseconds,
-- against the tens its pass took). A preview (a plan) still makes the pass for such a table.

-- The tenant's rows in a live table (p_live, its tenant predicate p_pred), counted by the tenant's
-- index, never by a scan that reads every tenant's rows (as pitr.rows_if_unwritten). Stable, so
-- inside a statement it counts what that statement sees.
create function pitr.tenant_row_count(p_live text, p_pred text) returns bigint
language plpgsql stable set search_path = pg_catalog, pg_temp set enable_seqscan = off set jit = off
as $$
declare
  v_rows bigint;
begin
  execute format('select count(*) from %s l where %s', p_live, p_pred) into v_rows;
  return v_rows;
end
$$;

-- pitr.table_diff (20261129002000_quiet_tables_skip_the_pass.sql): the pass of a restore's diff of a
-- table the probe was not asked of reads the snapshot's rows only when the tenant wrote the table
-- since; everything else as it was.
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
  -- The snapshot's horizon can tell whether the tenant wrote the table since: a whole-table
  -- overwrite or merge, asked of a probe (up to 10,000 rows) or inside the pass (more).
  v_askable boolean;
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
  v_askable := v_age is not null and v_chosen_t = 'true' and p_strategy in ('overwrite', 'merge');
  if v_askable and v_rows <= 10000 then
    -- A table the tenant has not written since the snapshot: every live row is one the snapshot
    -- read (the pass below trusts the same), so when they are as many as the snapshot's rows, their
    -- keys are the snapshot's and the pass would find nothing. One probe and one count tell it
    -- (and whether the tenant has rows), instead of the pass, which also reads the snapshot's rows
    -- and makes temporary tables. A table that was written pays the probe on top of the pass:
    -- asked only where the tenant has few rows, it costs less than the pass's fixed part (a larger
    -- table's pass asks the same itself, below).
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
    if v_askable and v_rows > 10000 then
      -- A table the probe above was not asked of: the pass reads the snapshot's rows only when the
      -- tenant wrote a row since (the pass's own rows written since, found first) or has another
      -- number of rows than the snapshot, in the same statement. Otherwise it finds nothing, as
      -- the probe would have told.
      v_target := format('(select t.* from %s t
          where exists (select from l) or pitr.tenant_row_count(%L, %L) <> %s)',
        v_target, r.live, r.tenant_pred, v_rows);
    end if;
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

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
