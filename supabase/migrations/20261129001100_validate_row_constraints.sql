-- Validate checks the snapshot's rows against the table's NOT NULL and CHECK constraints as they
-- are now. A migration that made a column NOT NULL (SET NOT NULL, after a backfill) or added a
-- CHECK since the snapshot leaves rows the restore cannot write back: validate answered that the
-- snapshot fit, and the restore failed on them (`schema_incompatible`, `constraint_violation`).

-- One pass over the snapshot's rows of one table, as the restore would write them (cast to
-- today's types), counting those that break each NOT NULL column and each validated CHECK
-- constraint of the live table. A row the restore would leave unchanged is a live row already and
-- meets them, so every row is counted. Not checked: a CHECK over a column the snapshot does not
-- restore (added since, or generated: its value is not known until written) and one added NOT
-- VALID (rows that already break it stay; only the rows written would be refused). A value that no
-- longer casts to today's type is validate_table's to report ('columns'); here it ends the pass
-- with no answer.
create function pitr.validate_rows(p_snapshot_table bigint)
returns table (check_name text, ok boolean, severity text, message text)
language plpgsql stable
set search_path = pg_catalog, pg_temp set jit = off
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_name text := (select format('%s.%s', st.table_schema, st.table_name)
    from pitr.backup_snapshot_tables st where st.id = p_snapshot_table);
  -- Per test: a condition on alias x that holds for a row breaking it, and what it is.
  v_tests text[];
  v_what text[];
  v_counts bigint[];
begin
  select coalesce(array_agg(t.test order by t.ord), '{}'), coalesce(array_agg(t.what order by t.ord), '{}')
  into v_tests, v_what
  from (
    select c.ord, format('x.%I is null', c.name) as test,
      format('column %s.%s is NOT NULL now', v_name, c.name) as what
    from pitr.live_columns(r.relid) with ordinality c(name, type, type_oid, is_generated,
      identity_always, not_null, has_default, store_type, ord)
    where c.not_null and format('%I', c.name) = any (r.cols)
    union all
    -- A CHECK fails when false; null passes. Its unqualified column names are x's.
    select 100000 + row_number() over (order by k.conname),
      format('(%s) is false', pg_get_expr(k.conbin, k.conrelid)),
      format('check constraint %s of %s', k.conname, v_name)
    from pg_constraint k
    where k.conrelid = r.relid and k.contype = 'c' and k.convalidated
      and not exists (select from unnest(k.conkey) n join pg_attribute a
        on a.attrelid = k.conrelid and a.attnum = n
        where format('%I', a.attname) <> all (r.cols))
  ) t;
  if cardinality(v_tests) = 0 then
    return;
  end if;
  begin
    execute format('select array[%s] from %s x',
      (select string_agg(format('count(*) filter (where %s)', test), ', ') from unnest(v_tests) test),
      pitr.target_sql(r))
    into v_counts;
  exception when data_exception or integrity_constraint_violation then
    return;
  end;
  return query
    select 'constraints', false, 'error',
      format('%s; %s snapshot rows break it', w, n)
    from unnest(v_what, v_counts) x(w, n)
    where n > 0;
  if not found then
    return query select 'constraints', true, 'info',
      format('the snapshot''s rows of %s meet its NOT NULL and CHECK constraints (%s)', v_name,
        cardinality(v_tests));
  end if;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
