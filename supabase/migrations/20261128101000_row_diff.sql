-- Row-level review: one page of the difference between a snapshot table and the tenant's rows
-- now, row by row, as a person deciding what to restore reads it. It changes nothing, and its
-- memory is one page whatever the table's size: the page is cut in the database, in key order,
-- after a cursor. Values are rendered by to_jsonb with the output settings pinned.

-- The primary key's columns of a restore, with their live types, for cursors and key objects.
create function pitr.key_columns(r pitr.restore_sql)
returns table (name text, quoted text, type text, ord integer)
language sql stable set search_path = pg_catalog, pg_temp set enable_nestloop = on as $$
  select c.name, format('%I', c.name), c.type, k.ord::integer
  from unnest(r.pk) with ordinality k(quoted, ord)
  join pitr.live_columns(r.relid) c on format('%I', c.name) = k.quoted
  order by k.ord
$$;

-- change: insert (in the snapshot, not live), update (both, different), delete (live only); with
-- p_change, only that kind. p_after: the sort key of the last row of the previous page (text of
-- each key column, or for a table without a primary key its hash, number and change). Rows come
-- in key order; sort_key is what the next page's cursor holds.
create function pitr.diff_page(p_snapshot_table bigint, p_change text, p_after text[],
  p_limit integer)
returns table (sort_key text[], key jsonb, change text, columns text[], snapshot jsonb, live jsonb)
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_keys text;      -- coalesce(t.k, l.k) as pitr_k<n>, for each key column
  v_order text;     -- d.pitr_k1, d.pitr_k2, ...
  v_sort_key text;  -- array[d.pitr_k1::text, ...]
  v_key text;       -- jsonb_build_object('k', d.pitr_k1, ...)
  v_after_t text := 'true';
  v_after_l text := 'true';
  v_differs text;
begin
  if cardinality(r.pk) = 0 then
    return query select * from pitr.diff_page_multiset(p_snapshot_table, p_change, p_after,
      p_limit);
    return;
  end if;
  select string_agg(format('coalesce(t.%s, l.%s) as pitr_k%s', k.quoted, k.quoted, k.ord), ', '
      order by k.ord),
    string_agg(format('d.pitr_k%s', k.ord), ', ' order by k.ord),
    format('array[%s]::text[]', string_agg(format('d.pitr_k%s::text', k.ord), ', ' order by k.ord)),
    format('jsonb_build_object(%s)', string_agg(format('%L, d.pitr_k%s', k.name, k.ord), ', '
      order by k.ord)),
    format('row(%s) > row(%s)', string_agg('t.' || k.quoted, ', ' order by k.ord),
      string_agg(format('$3[%s]::%s', k.ord, k.type), ', ' order by k.ord)),
    format('row(%s) > row(%s)', string_agg('l.' || k.quoted, ', ' order by k.ord),
      string_agg(format('$3[%s]::%s', k.ord, k.type), ', ' order by k.ord))
  into v_keys, v_order, v_sort_key, v_key, v_after_t, v_after_l
  from pitr.key_columns(r) k;
  if p_after is null then
    v_after_t := 'true';
    v_after_l := 'true';
  end if;
  -- The restored columns whose values differ, by name.
  select format('array_remove(array[%s]::text[], null)',
    string_agg(format('case when record_image_ne(row(t.%s), row(l.%s)) then %L end', x.quoted,
      x.quoted, x.name), ', '))
  into v_differs
  from (select format('%I', c.name) as quoted, c.name from pitr.live_columns(r.relid) c) x
  where x.quoted = any (r.cols);
  return query execute format($q$
    select %1$s, %2$s, d.change, d.columns, d.snapshot, d.live from (
      select %3$s,
        case when l.%4$s is null then 'insert' when t.%4$s is null then 'delete' else 'update' end
          as change,
        case when l.%4$s is null or t.%4$s is null then '{}'::text[] else %5$s end as columns,
        case when t.%4$s is null then null else to_jsonb(t) - 'pitr_ctid' end as snapshot,
        case when l.%4$s is null then null else to_jsonb(l) end as live
      from (select t.* from %6$s t where %7$s) t
      full join (select l.* from %8$s l where %9$s and %10$s) l on %11$s
      where l.%4$s is null or t.%4$s is null or %12$s
    ) d
    where $1 is null or d.change = $1
    order by %13$s
    limit $2 $q$,
    v_sort_key, v_key, v_keys, r.pk[1], v_differs, pitr.target_sql(r), v_after_t, r.live,
    r.tenant_pred, v_after_l, pitr.join_on(r.pk, 'l', 't'),
    format('record_image_ne(%s, %s)', pitr.row_of(r.cols, 'l'), pitr.row_of(r.cols, 't')),
    v_order)
  using p_change, p_limit, p_after;
end
$$;

-- diff_page for a table without a primary key: rows pair up as in pitr.multiset_diff_sql; an
-- unpaired (or paired but unequal) snapshot row is an insert, a live one a delete. The key is an
-- opaque text naming the side, the row image's hash and its number among the rows of that hash:
-- stable while nothing changes, and what a selective restore names the row by.
create function pitr.diff_page_multiset(p_snapshot_table bigint, p_change text, p_after text[],
  p_limit integer)
returns table (sort_key text[], key jsonb, change text, columns text[], snapshot jsonb, live jsonb)
language plpgsql
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres' set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
begin
  return query execute format($q$
    with pairs as (
      select coalesce(t.pitr_h, l.pitr_h) as h, coalesce(t.pitr_n, l.pitr_n) as n,
        case when t.pitr_n is null then null else to_jsonb(t) - array['pitr_ctid', 'pitr_h', 'pitr_n'] end
          as snapshot,
        case when l.pitr_n is null then null else to_jsonb(l) - array['pitr_h', 'pitr_n'] end
          as live
      from (select t.*, row_number() over (partition by t.pitr_h
              order by %1$s using operator(pg_catalog.*<)) as pitr_n
            from (select t.*, hashtextextended(%1$s::text, 0) as pitr_h from %2$s t) t
            where $3 is null or t.pitr_h >= $3[1]::bigint) t
      full join (select l.*, row_number() over (partition by l.pitr_h
              order by %3$s using operator(pg_catalog.*<)) as pitr_n
            from (select l.*, hashtextextended(%3$s::text, 0) as pitr_h from %4$s l where %5$s) l
            where $3 is null or l.pitr_h >= $3[1]::bigint) l
        on t.pitr_h = l.pitr_h and t.pitr_n = l.pitr_n
      where t.pitr_n is null or l.pitr_n is null or record_image_ne(%1$s, %3$s)),
    sides as (
      select p.h, p.n, 'delete' as change, null::jsonb as snapshot, p.live from pairs p
      where p.live is not null
      union all
      select p.h, p.n, 'insert', p.snapshot, null from pairs p where p.snapshot is not null)
    select array[s.h::text, s.n::text, s.change], to_jsonb(format('%%s:%%s:%%s',
        left(s.change, 1), s.h, s.n)), s.change, '{}'::text[], s.snapshot, s.live
    from sides s
    where ($1 is null or s.change = $1)
      and ($3 is null or row(s.h, s.n, s.change) > row($3[1]::bigint, $3[2]::bigint, $3[3]))
    order by s.h, s.n, s.change
    limit $2 $q$,
    pitr.row_of(r.cols, 't'), pitr.target_sql(r), pitr.row_of(r.cols, 'l'), r.live,
    r.tenant_pred)
  using p_change, p_limit, p_after;
end
$$;
