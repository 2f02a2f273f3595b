-- The diff compares only the rows that can have changed since the snapshot (issue 13). A live row
-- whose version was written by a transaction that had ended before the snapshot's read began
-- (its xmin precedes the read's xmin) was read by the snapshot exactly as it is now: the row is
-- equal to its snapshot image and needs no comparison. The diff then joins the snapshot's rows
-- with only the keys of those unchanged rows (narrow, no row images), and compares images only
-- for the rows written since. A full comparison of 100,000 rows of images took 300 ms of a
-- restore's 5% drift on PostgreSQL 15; the narrow join 100 ms (bench/restore.bench.ts).

-- The read's horizon of a snapshot taken live in one REPEATABLE READ transaction
-- (restore/snapshot.ts takeSnapshot). Snapshots built otherwise (an undo inside a restore, a
-- point-in-time state from the change log) have none and are always compared in full.
create table pitr.snapshot_horizons (
  snapshot_id uuid primary key references public.backup_snapshots (id) on delete cascade,
  -- pg_snapshot_xmin of the snapshot's read: every transaction before it had ended.
  horizon xid8 not null,
  -- The snapshot's own transaction. This row's xmin must be its low 32 bits: a row copied by a
  -- logical dump and restore (new transaction ids, where the horizon means nothing) or written
  -- any other way fails that check and its snapshot is compared in full.
  taken_by xid8 not null
);

-- Called by the snapshot's transaction, after its first read.
create function pitr.record_horizon(p_snapshot uuid) returns void
language sql set search_path = pg_catalog, pg_temp set jit = off as $$
  insert into pitr.snapshot_horizons (snapshot_id, horizon, taken_by)
  values (p_snapshot, pg_snapshot_xmin(pg_current_snapshot()), pg_current_xact_id())
$$;

-- age() of the snapshot's horizon, or null when its rows must all be compared. A live row is
-- unchanged since the snapshot when age(xmin) is greater: both ages are taken from the same
-- reference (the current transaction's id, or the latest completed one, fixed for the
-- transaction). Rows written since, by this transaction or any later one, are younger than the
-- horizon and are compared; a row whose age wrapped around (frozen, over 2^31 transactions old)
-- was written long before any snapshot. Null when: there is no horizon; its row was not written
-- by the snapshot's transaction; the horizon is 2^30 transactions old or more (ages of 32-bit ids
-- are exact only within 2^31); or a column's type changed since (the images differ by cast).
create function pitr.horizon_age(p_snapshot_table bigint) returns integer
language plpgsql stable set search_path = pg_catalog, pg_temp set jit = off as $$
declare
  v_age integer;
begin
  select age(((h.horizon::text::numeric % 4294967296)::bigint)::text::xid) into v_age
  from pitr.backup_snapshot_tables st
  join pitr.snapshot_horizons h on h.snapshot_id = st.snapshot_id
  where st.id = p_snapshot_table
    and h.xmin::text::numeric = h.taken_by::text::numeric % 4294967296
    and pg_snapshot_xmax(pg_current_snapshot())::text::numeric - h.horizon::text::numeric
      between 1 and 1073741824;
  if v_age is null or v_age <= 0 or v_age = 2147483647 or not (pitr.restore_sql(p_snapshot_table)).exact then
    return null;
  end if;
  return v_age;
end
$$;

-- The columns of a table's foreign keys (every key it has as the child), quoted. Nested loops
-- on, as for every catalog lookup (see pitr.fk_edge).
create function pitr.fk_child_columns(p_relid oid) returns text[]
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on set jit = off as $$
  select coalesce(array_agg(distinct format('%I', c)), '{}') from pitr.fk_edges e,
    unnest(e.child_columns) c where e.child_relid = p_relid
$$;

-- pitr.table_diff (20261128100300_engine_apply.sql), with the rows unchanged since the snapshot
-- left out of the comparison (pitr.horizon_age), and a table the tenant has no row in (a restore
-- of an emptied tenant) written whole with no join at all; the write set tells which updated rows
-- kept their foreign-key values (keys_kept). It also returns the snapshot's checksum as
-- recomputed by a preview (null when it materializes a restore's write set, which verifies what
-- it wrote instead): a plan used to read the snapshot twice, once for its checksum
-- (pitr.validate_table's digest, 136 ms of a 300 ms plan of 100,000 rows on PostgreSQL 15) and
-- once for the diff. In the preview's one pass, a row the restore would write is hashed from its
-- stored values, as validate does; a row whose live row was written before the snapshot's read,
-- which the restore keeps as it is and which equals the snapshot's row as read, counts with the
-- hash stored beside it, as the restore's own verification treats it (pitr.verify_written). An
-- altered store row whose live row is unchanged is not one the plan or the restore depends on;
-- validate still hashes every stored row. Everything else as it was. A new result type: dropped
-- and created.
drop function pitr.table_diff(bigint, text, boolean);

create function pitr.table_diff(p_snapshot_table bigint, p_strategy text,
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
          coalesce(sum((case when t.pitr_same then t.pitr_stored else %6$s end)::numeric), 0)
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
  execute format('select not exists (select from %s l where %s)', r.live, r.tenant_pred)
  into v_empty;
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
    execute format('drop table if exists %1$s; create temp table %1$s on commit drop as
        select row_number() over () as n, sctid, ltoid, lctid, ins, reins, lhash, keys_kept
        from pg_temp.pitr_pairs where sctid is not null', r.writes);
    -- Batches select their rows by n: without an index each would scan the whole write set.
    execute format('create index on %s (n); analyze %s', r.writes, r.writes);
    execute format('select count(*) filter (where ins and not reins),
        count(*) filter (where not ins or reins) from %s', r.writes) into v_ins, v_upd;
  end if;
  if p_strategy in ('overwrite', 'selective') then
    -- The rows deleted, and those re-inserted (their old image goes with the deletes), fetched by
    -- TID; the tenant is checked on each row but never through its index (see
    -- 20261129000200_tid_fetch_without_tenant_index.sql).
    if v_empty then
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
