-- Validate checks the snapshot's rows against the table's unique keys as they are now. A
-- migration that deduplicated a column and then made it unique (an email per tenant, a slug)
-- leaves an older snapshot whose own rows share a value under the new key: validate answered that
-- the snapshot fit, and the restore was refused when it wrote the second row (`key_conflict`).

-- One pass per primary or unique key of the live table over the snapshot's rows of one table, as
-- the restore would write them (cast to today's types), counting the key values that two or more
-- of them hold: the key's expressions and predicate as its index has them (pitr.table_keys), a
-- null key value shared only under NULLS NOT DISTINCT. Rows are grouped by the types' default
-- equality, which is the key's own for every built-in operator class. Not checked, and left to
-- the restore: a key over a column the snapshot does not restore (added since, or generated: its
-- values are not known until written) and exclusion constraints (finding overlaps among the rows
-- needs an index over them). Collisions with rows the restore keeps are the plan's
-- (pitr.plan_key_conflicts). A value that no longer casts to today's type is validate_table's to
-- report ('columns'); here it ends the pass with no answer.
create function pitr.validate_keys(p_snapshot_table bigint)
returns table (check_name text, ok boolean, severity text, message text)
language plpgsql stable
set search_path = pg_catalog, pg_temp set work_mem = '64MB' set jit = off
set timezone = 'UTC' set datestyle = 'ISO, YMD' set intervalstyle = 'postgres'
set extra_float_digits = 3 set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content'
as $$
declare
  r pitr.restore_sql := pitr.restore_sql(p_snapshot_table);
  v_name text := (select format('%s.%s', st.table_schema, st.table_name)
    from pitr.backup_snapshot_tables st where st.id = p_snapshot_table);
  k record;
  v_keys int := 0;
  v_values bigint;
  v_rows bigint;
  v_broken boolean := false;
begin
  for k in select * from pitr.table_keys(r.relid) t
      where t.kind in ('p', 'u') and t.columns <@ r.cols order by t.name loop
    begin
      execute format('select count(*), coalesce(sum(n), 0) from (
            select count(*) as n from (select %s from %s x where %s) x
            where %s group by %s having count(*) > 1) d',
        pitr.key_values_sql(k.exprs), pitr.target_sql(r), coalesce(k.pred, 'true'),
        case when k.nulls_not_distinct then 'true'
          else (select string_agg(format('x.pitr_k%s is not null', n), ' and ')
            from generate_subscripts(k.exprs, 1) n) end,
        (select string_agg(format('x.pitr_k%s', n), ', ') from generate_subscripts(k.exprs, 1) n))
      into v_values, v_rows;
    exception when data_exception or integrity_constraint_violation then
      return;
    end;
    v_keys := v_keys + 1;
    if v_values > 0 then
      v_broken := true;
      return query select 'keys', false, 'error',
        format('key %s of %s: %s snapshot rows share %s values of it; the restore would be refused',
          k.name, v_name, v_rows, v_values);
    end if;
  end loop;
  if v_keys > 0 and not v_broken then
    return query select 'keys', true, 'info',
      format('no two of the snapshot''s rows of %s share a value of its unique keys (%s)', v_name,
        v_keys);
  end if;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
