-- A moment before a column was added to a captured table can be rebuilt. The change log refused
-- every moment before any schema change of a table: an application's migration that only added a
-- column (the commonest) closed the log's window behind it, and a restore to just before a buggy
-- release that came with one was refused, where last night's snapshot restored.
--
-- Adding a column changes nothing a moment needs from the log. The new column takes the next
-- attnum, so an old image (the record text of the row, by position) is the image of today's row
-- with the added columns cut off the end; padded with a NULL for each, it reads back as today's
-- row type. The moment is stored with the columns it had (as a snapshot taken then would be), so a
-- restore to it treats the added columns as a snapshot's restore treats a column added since: a
-- row it keeps keeps its value, a row it inserts takes the column's default.
--
-- Each schema change now records the table's signature before it (pitr.schema_changes), from
-- which the log knows what an image logged at any seq holds. Any other change after the moment
-- (a column dropped, a type changed, a column added and dropped again) is refused as before, and
-- so is a change recorded before this migration, whose signature before it is unknown, and a
-- column added with a domain type that refuses NULL, which an old image cannot be read back as.

-- The signature of a captured table before each of its schema changes (pitr.capture_signature),
-- by the seq of the change's 'S' row in pitr.changes. Beside the log, not in it: adding a column
-- to pitr.changes would take its lock on every day's partition, under the application's writes.
-- One row per ALTER of a captured table's columns; once the log has dropped the day of its 'S'
-- row it is never read again (pitr.schema_changes_after joins from the log's rows).
create table pitr.schema_changes (
  relid oid not null,
  seq bigint not null,
  shape_before jsonb not null,
  primary key (relid, seq)
);
select pitr.make_private('pitr.schema_changes');

-- pitr.capture_ddl (20261128100600_capture.sql), recording the signature before the change beside
-- its 'S' row; everything else as it was.
create or replace function pitr.capture_ddl() returns event_trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp set timezone = 'UTC'
set datestyle = 'ISO, YMD' set lc_monetary = 'C' set jit = off as $$
declare
  v pitr.capture_tables;
  v_sig jsonb;
  v_tx bigint;
  v_now timestamptz;  -- written as text under the settings above, read by pitr.stamp_commit
  v_state text;
  v_arm boolean;
  v_seq bigint;
begin
  for v in select * from pitr.capture_tables c where exists (select from pg_class where oid = c.relid)
  loop
    v_sig := pitr.capture_signature(v.relid);
    -- A renamed or moved table too: the capture function names it (TRUNCATE reads it).
    continue when v_sig = v.signature and (v.table_schema, v.table_name) = (select n.nspname::text,
      c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.oid = v.relid);
    if v_sig -> 'shape' is distinct from v.signature -> 'shape' then
      -- Armed as in the capture functions (pitr.arm_sql(true)), under the pinned settings.
      v_tx := txid_current();
      v_now := clock_timestamp();
      v_state := current_setting('pitr.armed', true);
      v_arm := false;
      if coalesce(v_state, '') = '' then
        v_arm := true;
        perform set_config('pitr.armed', 'A' || v_now::text, true);
      elsif left(v_state, 1) in ('F', 'S') then
        v_arm := true;
        perform set_config('pitr.armed',
          case left(v_state, 1) when 'F' then 'A' else 'R' end || substr(v_state, 2), true);
      end if;
      insert into pitr.changes (changed_at, txid, relid, op, arms_commit, old_row)
      -- The command and what it did, not its text: the text may hold values.
      values (v_now, v_tx, v.relid, 'S', v_arm, format('%s %s: %s', tg_tag, v.relid::regclass,
        pitr.describe_shape_change(v.signature, v_sig)))
      returning seq into v_seq;
      insert into pitr.schema_changes (relid, seq, shape_before) values (v.relid, v_seq, v.signature);
    end if;
    perform pitr.regenerate_capture(v.relid);
  end loop;
exception when others then
  raise warning 'pitr: could not record a schema change of a captured table: %', sqlerrm;
end
$$;

-- The schema changes of a captured table committed after p_at, in the order they happened, each
-- with the table's signature before it (null when recorded before pitr.schema_changes) and after
-- it (the next one's before, or the table's signature now).
create function pitr.schema_changes_after(p_relid oid, p_at timestamptz)
returns table (seq bigint, committed_at timestamptz, described text, shape_before jsonb,
  shape_after jsonb)
language sql stable set search_path = pg_catalog, pg_temp set jit = off as $$
  select c.seq, x.committed_at, c.old_row, s.shape_before,
    coalesce(lead(s.shape_before) over (order by c.seq), pitr.capture_signature(p_relid))
  from pitr.changes c join pitr.commits x on x.txid = c.txid  -- a schema change is always stamped
  left join pitr.schema_changes s on s.relid = c.relid and s.seq = c.seq
  where c.relid = p_relid and c.tenant_id is null and c.op = 'S'
    and c.changed_at >= pitr.log_from(p_at) and x.committed_at > p_at
  order by c.seq
$$;

-- Whether a schema change only added columns: every column before it is still there with the
-- same attnum and type (its nested types too), and every other column has a higher attnum, so an
-- image logged before it is an image of the row after it with the added columns cut off its end.
create function pitr.columns_only_added(p_before jsonb, p_after jsonb) returns boolean
language sql immutable set search_path = pg_catalog, pg_temp set jit = off as $$
  select not exists (
      select from jsonb_array_elements(p_before -> 'shape' -> 1) b
      where not exists (select from jsonb_array_elements(p_after -> 'shape' -> 1) a where a = b))
    and not exists (
      select from jsonb_array_elements(p_after -> 'shape' -> 1) a
      where (a ->> 0)::int <= (select coalesce(max((b ->> 0)::int), 0)
        from jsonb_array_elements(p_before -> 'shape' -> 1) b)
        and not exists (select from jsonb_array_elements(p_before -> 'shape' -> 1) b where a = b))
$$;

-- pitr.schema_change_after (20261128100600_capture.sql): a change that only added columns no
-- longer stops the log (see the head of this file); its messages are as they were.
create or replace function pitr.schema_change_after(p_relid oid, p_at timestamptz) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp set timezone = 'UTC' set datestyle = 'ISO, YMD'
set lc_monetary = 'C' set jit = off
as $$
declare
  v pitr.capture_tables := (select x from pitr.capture_tables x where x.relid = p_relid);
  v_now jsonb := pitr.capture_signature(p_relid);
  v_ddl record;
  v_first jsonb;
  v_added record;
begin
  if (v_now -> 'shape') is distinct from (v.signature -> 'shape') then
    return format('%s was altered when no event trigger could record it (%s): its change log cannot rebuild any moment before that; turn its capture off and on again to start a new log',
      p_relid::regclass, pitr.describe_shape_change(v.signature, v_now));
  end if;
  for v_ddl in select * from pitr.schema_changes_after(p_relid, p_at) loop
    if v_ddl.shape_before is null
      or not pitr.columns_only_added(v_ddl.shape_before, v_ddl.shape_after) then
      return format('%s was altered after that moment, at %s (%s): the log cannot rebuild a moment before a schema change of a captured table, except a column added or renamed',
        p_relid::regclass, v_ddl.committed_at, v_ddl.described);
    end if;
    v_first := coalesce(v_first, v_ddl.shape_before);
  end loop;
  -- An old image reads back with a NULL in each added column, which a domain may refuse (NOT NULL,
  -- or a CHECK that NULL fails), even in a row the moment's columns alone would take.
  for v_added in
    select a.attname, format_type(a.atttypid, a.atttypmod) as type
    from pg_attribute a join pg_type t on t.oid = a.atttypid
    where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped and t.typtype = 'd'
      and v_first is not null
      and a.attnum <> all (array(
        select (e ->> 0)::int from jsonb_array_elements(v_first -> 'shape' -> 1) e))
    order by a.attnum
  loop
    begin
      execute format('select null::%s', v_added.type);
    exception when others then
      return format('%s was altered after that moment: column %I (%s) was added, a domain that refuses NULL (%s), which a row logged before it would read back as',
        p_relid::regclass, v_added.attname, v_added.type, sqlerrm);
    end;
  end loop;
  return null;
end
$$;

-- The attnums of a captured table's columns at p_at, its generated columns included: those before
-- the first schema change after it, else today's. Meaningful only where pitr.schema_change_after
-- finds nothing that stops the log.
create function pitr.columns_at(p_relid oid, p_at timestamptz) returns smallint[]
language sql stable set search_path = pg_catalog, pg_temp set jit = off as $$
  select coalesce(
    (select array(select (e ->> 0)::smallint from jsonb_array_elements(s.shape_before -> 'shape' -> 1) e)
     from pitr.schema_changes_after(p_relid, p_at) s order by s.seq limit 1),
    array(select a.attnum from pg_attribute a
      where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped order by a.attnum))
$$;

-- A table's store for some of its columns (by attnum; null: all), made if there is none: the
-- columns of a moment before some were added. pitr.store_for (20261129000600) with the columns
-- chosen; everything else as it was.
create function pitr.store_for(p_relid oid, p_attnums smallint[]) returns pitr.backup_stores
language plpgsql set search_path = pg_catalog, pg_temp set jit = off as $$
declare
  v_schema text;
  v_table text;
  v_cols jsonb;
  v_store pitr.backup_stores;
  v_name text;
begin
  select n.nspname, c.relname into v_schema, v_table
  from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = p_relid;
  -- type: the live column's type when the store was made; store: the type the store keeps it in.
  select jsonb_agg(jsonb_build_object('name', c.name, 'type', c.type, 'store', c.store_type))
  into v_cols
  from pitr.live_columns(p_relid) c where not c.is_generated
    and (p_attnums is null or c.name in (select a.attname from pg_attribute a
      where a.attrelid = p_relid and a.attnum = any (p_attnums)));
  select * into v_store from pitr.backup_stores
  where table_schema = v_schema and table_name = v_table and columns = v_cols;
  if found then
    return v_store;
  end if;
  -- Serialise the creation of a table's store between concurrent snapshots.
  perform pg_advisory_xact_lock(hashtext('pitr:store'), p_relid::int4);
  select * into v_store from pitr.backup_stores
  where table_schema = v_schema and table_name = v_table and columns = v_cols;
  if found then
    return v_store;
  end if;
  v_name := 's' || nextval(pg_get_serial_sequence('pitr.backup_stores', 'id'));
  execute format('create table pitr_store.%I (%s, pitr_tenant text not null,
      pitr_from bigint not null, pitr_to bigint, pitr_hash bigint not null)
      with (fillfactor = 90)',
    v_name, (select string_agg(format('%I %s', c ->> 'name', c ->> 'store'), ', ')
      from jsonb_array_elements(v_cols) c));
  perform pitr.make_private(format('pitr_store.%I', v_name)::regclass);
  -- A tenant's open versions by where they begin, and its closed ones by where they end (see the
  -- head of 20261129000600_store_open_closed.sql); fillfactor 90 above leaves room on each page
  -- for closing versions in place. Set at creation, not by ALTER TABLE, which would run capture's
  -- DDL check (pitr.capture_ddl) inside every first snapshot.
  execute format('create index %I on pitr_store.%I (pitr_tenant, pitr_from) where pitr_to is null',
    v_name || '_open', v_name);
  execute format('create index %I on pitr_store.%I (pitr_tenant, pitr_to) where pitr_to is not null',
    v_name || '_closed', v_name);
  insert into pitr.backup_stores (id, table_schema, table_name, columns, store_table, hash_by_text)
  overriding system value
  values (substr(v_name, 2)::bigint, v_schema, v_table, v_cols, v_name,
    pitr.hash_by_text(array(select c ->> 'store' from jsonb_array_elements(v_cols) c)))
  returning * into v_store;
  return v_store;
end
$$;

create or replace function pitr.store_for(p_relid oid) returns pitr.backup_stores
language sql set search_path = pg_catalog, pg_temp set jit = off as $$
  select pitr.store_for(p_relid, null::smallint[])
$$;

-- pitr.snapshot_table_from (20261128100200_engine_store.sql) into the store of some of the
-- table's columns (by attnum; null: all); everything else as it was.
create function pitr.snapshot_table_from(p_snapshot uuid, p_position integer, p_relid oid,
  p_source text, p_store_tenant text, p_attnums smallint[])
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set jit = off as $$
declare
  v_snap public.backup_snapshots := (select x from public.backup_snapshots x where x.id = p_snapshot);
  v_table record;
  v_pk text[];
  v_store pitr.backup_stores;
  v_id bigint;
  v_stored record;
begin
  select * into v_table from pitr.protected_tables where relid = p_relid;
  v_pk := coalesce(pitr.primary_key_of(p_relid), '{}');
  v_store := pitr.store_for(p_relid, p_attnums);
  v_stored := pitr.store_rows(v_store.id, coalesce(p_store_tenant, v_snap.tenant_id), v_snap.seq,
    v_pk, p_source);
  insert into pitr.backup_snapshot_tables (snapshot_id, tenant_id, store_tenant, position,
    table_schema, table_name, tenant_column, store_id, store_table, seq, columns, primary_key,
    row_count, checksum)
  values (p_snapshot, v_snap.tenant_id, coalesce(p_store_tenant, v_snap.tenant_id), p_position,
    v_table.table_schema, v_table.table_name,
    v_table.tenant_column, v_store.id, v_store.store_table, v_snap.seq, v_store.columns, v_pk,
    v_stored.stored_rows, v_stored.stored_checksum)
  returning id into v_id;
  return v_id;
end
$$;

create or replace function pitr.snapshot_table_from(p_snapshot uuid, p_position integer,
  p_relid oid, p_source text, p_store_tenant text default null)
returns bigint
language sql set search_path = pg_catalog, pg_temp set jit = off as $$
  select pitr.snapshot_table_from(p_snapshot, p_position, p_relid, p_source, p_store_tenant,
    null::smallint[])
$$;

-- pitr.snapshot_table_at (20261128100600_capture.sql): the moment's columns are those it had
-- (pitr.columns_at), and an image logged before a column was added is padded with a NULL for each
-- column added after it (the widths by seq, from pitr.schema_changes_after); everything else as it
-- was.
create or replace function pitr.snapshot_table_at(p_snapshot uuid, p_position integer, p_relid oid,
  p_at timestamptz, p_store_tenant text default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = postgres set extra_float_digits = 3 set bytea_output = hex
set lc_monetary = 'C' set array_nulls = on set xmloption = content set jit = off
as $$
declare
  v_table record;
  v_capture pitr.capture_tables;
  v_tenant text := (select tenant_id from public.backup_snapshots where id = p_snapshot);
  v_rel text := p_relid::regclass::text;
  v_from timestamptz;
  v_blocker text;
  v_pk text[] := pitr.primary_key_of(p_relid);
  v_pred text;
  v_select text;
  v_attnums smallint[];
  v_image text := 'c.old_row';
begin
  select * into v_table from pitr.protected_tables where relid = p_relid;
  select * into v_capture from pitr.capture_tables where relid = p_relid;
  if not found or v_capture.enabled_at > p_at then
    raise exception 'table %.% has no change log back to %', v_table.table_schema,
      v_table.table_name, p_at using errcode = 'PT422';
  end if;
  v_blocker := pitr.schema_change_after(p_relid, p_at);
  if v_blocker is not null then
    raise exception '%', v_blocker using errcode = 'PT423';
  end if;
  v_from := pitr.log_from(p_at);
  v_pred := pitr.tenant_predicate(p_relid, v_table.tenant_column, v_tenant);
  v_attnums := pitr.columns_at(p_relid, p_at);
  v_select := (select string_agg(format('l.%I', a.attname), ', ' order by a.attnum)
    from pg_attribute a where a.attrelid = p_relid and a.attnum = any (v_attnums)
      and not a.attisdropped and a.attgenerated = '');
  -- An image logged before the k-th schema change after p_at has that change's columns before
  -- it: the first change after its seq says how many, and the rest of today's are padded NULL.
  select coalesce('case ' || string_agg(format('when c.seq < %s then left(c.old_row, -1) || %L',
      s.seq, repeat(',', (n.width - jsonb_array_length(s.shape_before -> 'shape' -> 1))::int)
        || ')'),
      ' ' order by s.seq) || ' else c.old_row end', 'c.old_row')
  into v_image
  from pitr.schema_changes_after(p_relid, p_at) s,
    (select count(*) as width from pg_attribute a
     where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped) n;
  -- store_rows runs this with nested loops off: the stamp is looked up per change by a subquery
  -- (a join would read every stamp of the retention window), and the old images are cast in a
  -- plain projection (a lateral join would be a nested loop, priced so high that it is compiled
  -- by JIT, measured at 2 s for five rows).
  return pitr.snapshot_table_from(p_snapshot, p_position, p_relid, format(
    '(with changed as materialized (
       select distinct on (%1$s) %2$s, c.op, %11$s as old_row
       from pitr.changes c
       where c.relid = %3$s and c.tenant_id = %4$L and c.changed_at >= %5$L
         and c.op in (''I'', ''U'', ''D'')
         and coalesce((select x.committed_at from pitr.commits x where x.txid = c.txid),
           c.changed_at) > %6$L
       order by %1$s, c.seq)
     select %7$s from %8$s l
     where %9$s and not exists (select from changed ch where %10$s)
     union all
     select %7$s from (select (x.r).* from (select ch.old_row::%8$s as r from changed ch
       where ch.op <> ''I'' offset 0) x) l
     where %9$s)',
    (select string_agg(format('pitr_k%s', i), ', ') from generate_subscripts(v_pk, 1) i),
    (select string_agg(format('%s as pitr_k%s', pitr.key_value_sql(i, cardinality(v_pk),
        (select format_type(a.atttypid, a.atttypmod) from pg_attribute a
         where a.attrelid = p_relid and a.attname = v_pk[i])), i), ', ')
     from generate_subscripts(v_pk, 1) i),
    p_relid, v_tenant, v_from, p_at, v_select, v_rel, v_pred,
    (select string_agg(format('ch.pitr_k%s = l.%I', i, v_pk[i]), ' and ')
     from generate_subscripts(v_pk, 1) i),
    v_image),
    p_store_tenant, v_attnums);
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
