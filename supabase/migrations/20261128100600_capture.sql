-- Change capture for true point-in-time restores: the log and its retention, commit stamps, the
-- per-table capture triggers, schema changes of captured tables, and the state of a table at a
-- moment rebuilt from the log, exact for every type and every session setting.
--
-- How a row is kept. The log holds each changed row's old image as its record text
-- (row(r.*)::text) and its key as its column's text, produced inside the capture function with every
-- setting that shapes a value's text pinned by SET clauses, and read back with a cast to the
-- table's row type under the same settings. Text in, text out through each type's own output and
-- input functions is exact: float -0, NaN and shortest-exact digits (extra_float_digits 3), array
-- lower bounds ([0:1]={...}), json as written, money (lc_monetary C), timestamptz (TimeZone UTC),
-- composite columns, domains, enums. It was measured against the former jsonb image (to_jsonb of
-- the row, read back with jsonb_populate_record, lossy for all of those) and is smaller: 255
-- against 350 bytes for the benchmark's row, because a record's text does not spell its keys.
-- Typed per-table logs were not taken: an ALTER TABLE of the application would have to alter the
-- log too, and a log that no longer fits would make the application's writes fail.
--
-- The settings, pinned by the rebuild; each capture function pins those its column types are
-- written by (pitr.output_settings), with the same values (tests/pit_exact.test.ts checks both):
--   search_path pg_catalog, pg_temp (reg* types), TimeZone UTC, DateStyle 'ISO, YMD',
--   IntervalStyle postgres (its input reads signs differently under sql_standard),
--   extra_float_digits 3, bytea_output hex, lc_monetary C; and, for reading only, array_nulls on
--   and xmloption content.

-- The old log (jsonb images) is set aside, converted below, then dropped.
alter table pitr.changes rename to changes_jsonb;
do $$
declare
  v record;
begin
  for v in
    select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'pitr.changes_jsonb'::regclass
  loop
    execute format('alter table pitr.%I rename to %I', v.relname, 'jsonb_' || v.relname);
  end loop;
end
$$;
alter index if exists pitr.pitr_changes_table_time rename to changes_jsonb_table_time;

-- One row per changed row: its key (the key column's text; for a key of several columns, the
-- text of the array of their texts, in key order) and its image before the change (null for an
-- insert); 'S' rows record a schema change of a captured table (old_row: what changed).
-- arms_commit marks the row that arms its transaction's commit stamp (pitr.commits, below).
-- Columns ordered so that the fixed-width ones pack without padding.
create table pitr.changes (
  seq bigint not null default nextval('pitr.change_seq'),
  changed_at timestamptz not null default clock_timestamp(),
  txid bigint not null default txid_current(),
  relid oid not null,
  op "char" not null check (op in ('I', 'U', 'D', 'S')),
  arms_commit boolean not null default false,
  tenant_id text,
  pk text,
  old_row text
) partition by range (changed_at);
-- The rebuild reads one table's changes of one tenant since a moment.
create index changes_by_tenant on pitr.changes (relid, tenant_id, changed_at);
create table pitr.changes_default partition of pitr.changes default;

-- Commit order. A transaction that writes a captured table gets one row here, stamped with
-- clock_timestamp() when it commits (by a deferred constraint trigger, below): the state at a
-- moment T holds exactly the transactions whose stamp is <= T, so one that began before T and
-- committed after it is left out whole. since: the time of its first logged change.
-- A transaction whose captured changes are all one statement gets no row: its stamp is the time
-- of its log rows, one time for all of them, taken after its changes and before its commit. The
-- argument below holds for any stamp between a transaction's last change and its commit, so it
-- holds for this one; what it gives up is placing such a transaction at its commit (one that
-- stays open after its only write counts from that write). It spares the commonest writes,
-- autocommit statements and one-statement transactions, the stamp's cost (measured: ~40-80 us of
-- CPU a transaction on the benchmark's machine, a third of capture's). A second captured
-- statement arms the stamp, so a transaction that writes before and after a moment is never
-- split.
create table pitr.commits (
  txid bigint primary key,
  since timestamptz not null,
  committed_at timestamptz not null
);
-- A transaction that committed after T may have logged changes before T; the rebuild reads back
-- to its first change. Only transactions longer than a second are indexed for that (the others
-- began after T - 1 s), so the index stays small and costs the writes nothing.
create index commits_long on pitr.commits (committed_at) include (since)
  where committed_at - since > interval '1 second';
select pitr.make_private('pitr.changes'), pitr.make_private('pitr.changes_default'),
  pitr.make_private('pitr.commits');

-- The commit stamp, fired when the transaction commits (deferred) for the row that armed it.
-- security definer: it runs at commit as the application's role, which is granted nothing here.
--
-- Why the stamp gives a state that existed. The stamp is taken just before the commit becomes
-- visible, not at it, so a transaction stamped <= T may become visible after T. Take two
-- transactions A and B that change the same row: B's change waits for A's row lock, which A
-- holds until it is visible, so B changes the row after A's stamp and is stamped after its own
-- change: stamp(A) < visible(A) < change(B) < stamp(B). Stamps therefore order conflicting
-- transactions as they really happened, and a rebuild never keeps B without A, nor undoes A
-- while keeping B; transactions that share no row may be kept or left out independently, which
-- is a state the same commits could have produced. Every transaction is all or nothing: its log
-- rows, its stamp and its effect on the live rows become visible to the rebuild together.
--
-- Arming. The transaction-local setting pitr.armed is a state letter followed by the time of
-- the transaction's first logged change: 'F' after its first logged statement (no stamp yet), 'A' once a row armed the stamp, 'S' once it was stamped, 'R' when armed again after a
-- stamp. A stamp taken early (SET CONSTRAINTS ALL IMMEDIATE fires it at the end of a statement;
-- so does an application's deferred trigger that changes a captured table after this one) leaves
-- 'S', so the next captured change arms it again and the last stamp stays after the last change.
-- Only then is the stamp an upsert: a plain insert costs the commit half as much (measured, 28
-- against 53 us). pitr.arm_sql writes the capture side.
create function pitr.stamp_commit() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_state text := current_setting('pitr.armed', true);
  v_since timestamptz := least(new.changed_at, nullif(substr(v_state, 2), '')::timestamptz);
begin
  if left(v_state, 1) = 'R' then
    insert into pitr.commits as c (txid, since, committed_at)
    values (new.txid, v_since, clock_timestamp())
    on conflict (txid) do update
    set committed_at = excluded.committed_at, since = least(c.since, excluded.since);
  else
    insert into pitr.commits (txid, since, committed_at)
    values (new.txid, v_since, clock_timestamp());
  end if;
  perform set_config('pitr.armed', 'S' || substr(v_state, 2), true);
  return null;
end
$$;

-- The capture side of arming, as PL/pgSQL statements on the variables v_now (this statement's
-- time), v_state (pitr.armed as it was) and v_arm, for the capture functions and capture_ddl.
-- p_always: arm on the first statement too (a schema change is placed at its commit).
create function pitr.arm_sql(p_always boolean) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select format($a$
  if coalesce(v_state, '') = '' then
    -- The transaction's first logged statement. Times are written under the pinned settings.
    v_arm := %s;
    perform set_config('pitr.armed', case when v_arm then 'A' else 'F' end || v_now::text, true);
  elsif left(v_state, 1) in ('F', 'S') then
    v_arm := true;
    perform set_config('pitr.armed',
      case left(v_state, 1) when 'F' then 'A' else 'R' end || substr(v_state, 2), true);
  end if;$a$,
    case when p_always then 'true' else 'false' end)
$$;
create constraint trigger changes_commit_stamp after insert on pitr.changes
  deferrable initially deferred for each row when (new.arms_commit)
  execute function pitr.stamp_commit();
-- Fires in every session, replicas' apply workers included, like the capture triggers.
alter table pitr.changes enable always trigger changes_commit_stamp;

-- The daily partitions from p_from for p_days days. Creating a partition locks the log briefly,
-- so the job makes them ahead of the day they are for.
create function pitr.ensure_change_partitions(p_from date default current_date,
  p_days integer default 3) returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_day date;
  v_name text;
  v_made integer := 0;
begin
  for v_day in select d::date from generate_series(p_from, p_from + p_days - 1, interval '1 day') d
  loop
    v_name := 'changes_' || to_char(v_day, 'YYYYMMDD');
    continue when to_regclass(format('pitr.%I', v_name)) is not null;
    begin
      execute format('create table pitr.%I partition of pitr.changes for values from (%L) to (%L)',
        v_name, (v_day::timestamp at time zone 'UTC'), ((v_day + 1)::timestamp at time zone 'UTC'));
      perform pitr.make_private(format('pitr.%I', v_name)::regclass);
      -- The partition's clone of the stamp trigger must fire in every session too.
      execute format('alter table pitr.%I enable always trigger changes_commit_stamp', v_name);
      v_made := v_made + 1;
    exception when others then
      -- Rows of that day already sit in the default partition: leave them there.
      raise warning 'pitr: no partition for %: %', v_day, sqlerrm;
    end;
  end loop;
  return v_made;
end
$$;

-- Drops the days older than the retention, and records from when the log is complete. A
-- transaction that began on a dropped day and committed after it lost its first changes, so the
-- log is complete only after its commit: a second after the day for the short ones (see
-- commits_long), its stamp for a longer one. Stamps older than that are no longer looked up.
create function pitr.drop_expired_changes() returns integer
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_cutoff timestamptz := clock_timestamp() - (select retention from pitr.settings);
  v_part record;
  v_end timestamptz;
  v_dropped integer := 0;
begin
  for v_part in
    select c.relname, to_date(right(c.relname, 8), 'YYYYMMDD') as day
    from pg_inherits i join pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'pitr.changes'::regclass and c.relname ~ '^changes_\d{8}$'
  loop
    v_end := (v_part.day + 1)::timestamp at time zone 'UTC';
    if v_end <= v_cutoff then
      execute format('drop table pitr.%I', v_part.relname);
      perform pitr.log_complete_after(v_end);
      v_dropped := v_dropped + 1;
    end if;
  end loop;
  delete from pitr.changes_default where changed_at < v_cutoff;
  if found then
    perform pitr.log_complete_after(v_cutoff);
  end if;
  delete from pitr.commits where committed_at < (select complete_since from pitr.settings);
  perform pitr.ensure_change_partitions();
  return v_dropped;
end
$$;

create function pitr.log_complete_after(p_dropped_before timestamptz) returns void
language sql set search_path = pg_catalog, pg_temp as $$
  update pitr.settings
  set complete_since = greatest(complete_since, p_dropped_before + interval '1 second',
    (select max(committed_at) from pitr.commits
     where committed_at - since > interval '1 second' and committed_at > p_dropped_before
       and since < p_dropped_before))
$$;

-- The shape of a row type: its attribute count (dropped columns included: a column added and
-- dropped again changes the record text of the rows logged in between) and, per live column,
-- its position, type and, for composite types (through domains and arrays), their own shape.
-- Names are not in it: a rename leaves every logged record text readable by position.
create function pitr.type_shape(p_type oid, p_depth integer) returns jsonb
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  t pg_type;
begin
  select * into t from pg_type where oid = p_type;
  if not found or p_depth > 8 then
    return null;
  elsif t.typtype = 'd' then
    return pitr.type_shape(t.typbasetype, p_depth + 1);
  elsif t.typtype = 'c' then
    return pitr.row_shape(t.typrelid, p_depth + 1);
  elsif t.typcategory = 'A' and t.typelem <> 0 then
    return pitr.type_shape(t.typelem, p_depth + 1);
  end if;
  return null;
end
$$;

create function pitr.row_shape(p_relid oid, p_depth integer default 0) returns jsonb
language sql stable set search_path = pg_catalog, pg_temp as $$
  select jsonb_build_array(c.relnatts, coalesce((
    select jsonb_agg(jsonb_build_array(a.attnum, format_type(a.atttypid, a.atttypmod),
      pitr.type_shape(a.atttypid, p_depth)) order by a.attnum)
    from pg_attribute a where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped),
    '[]'::jsonb))
  from pg_class c where c.oid = p_relid
$$;

-- A captured table's signature: its shape, and its column names in order.
create function pitr.capture_signature(p_relid oid) returns jsonb
language sql stable set search_path = pg_catalog, pg_temp as $$
  select jsonb_build_object('shape', pitr.row_shape(p_relid), 'names', coalesce((
    select jsonb_agg(a.attname order by a.attnum) from pg_attribute a
    where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped), '[]'::jsonb))
$$;

-- What a schema change did, in words, from the signatures before and after it.
create function pitr.describe_shape_change(p_before jsonb, p_after jsonb) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  with b as (select (c ->> 0)::int as attnum, c ->> 1 as type, c -> 2 as nested, n as name
      from jsonb_array_elements(p_before -> 'shape' -> 1) with ordinality x(c, i)
      join lateral (select p_before -> 'names' ->> (i::int - 1) as n) nm on true),
    a as (select (c ->> 0)::int as attnum, c ->> 1 as type, c -> 2 as nested, n as name
      from jsonb_array_elements(p_after -> 'shape' -> 1) with ordinality x(c, i)
      join lateral (select p_after -> 'names' ->> (i::int - 1) as n) nm on true),
    said as (
      select format('column %I %s added', a.name, a.type) as s, a.attnum from a
      where not exists (select from b where b.attnum = a.attnum)
      union all
      select format('column %I dropped', b.name), b.attnum from b
      where not exists (select from a where a.attnum = b.attnum)
      union all
      select format('column %I changed from %s to %s', a.name, b.type, a.type), a.attnum
      from a join b using (attnum) where a.type <> b.type
      union all
      select format('the type %s of column %I was altered', a.type, a.name), a.attnum
      from a join b using (attnum) where a.type = b.type and a.nested is distinct from b.nested)
  select coalesce(string_agg(s, ', ' order by attnum), 'columns added and dropped again') from said
$$;

-- The registry of captured tables keeps each one's signature as capture last knew it.
alter table pitr.capture_tables add column signature jsonb;
update pitr.capture_tables set signature = pitr.capture_signature(relid)
where exists (select from pg_class where oid = relid);

-- The key's text as logged, on alias p_alias: one column's own text, or for several the text of
-- the array of their texts (smaller than an array value: 25 bytes a change on the benchmark).
create function pitr.key_text_sql(p_pk text[], p_alias text) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select case when cardinality(p_pk) = 1 then format('%I.%I::text', p_alias, p_pk[1])
    else (select 'array[' || string_agg(format('%I.%I::text', p_alias, c), ', ') || ']::text'
      from unnest(p_pk) c) end
$$;

-- The logged key's column i (1-based) of n, read back from alias c as type p_type.
create function pitr.key_value_sql(p_i integer, p_n integer, p_type text) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select case when p_n = 1 then format('c.pk::%s', p_type)
    else format('((c.pk::text[])[%s])::%s', p_i, p_type) end
$$;

-- The settings that shape how a table's values are written, from its column types (through
-- domains, arrays, ranges and composite columns): each one pinned costs every captured
-- statement (measured: the six together ~19 us of CPU a statement, more than the log's insert),
-- so a capture function pins only those its table needs. A type not known here to write the
-- same text under every setting gets them all. search_path is always pinned (security definer).
create function pitr.output_settings(p_relid oid) returns text[]
language sql stable set search_path = pg_catalog, pg_temp as $$
  with recursive t(oid) as (
    select a.atttypid from pg_attribute a
    where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped
    union
    select x.next from t join pg_type y on y.oid = t.oid
    cross join lateral (
      select y.typbasetype where y.typtype = 'd'
      union all select y.typelem where y.typcategory = 'A' and y.typelem <> 0
      union all select r.rngsubtype from pg_range r
        where (y.typtype = 'r' and r.rngtypid = y.oid) or (y.typtype = 'm' and r.rngmultitypid = y.oid)
      union all select a.atttypid from pg_attribute a
        where y.typtype = 'c' and a.attrelid = y.typrelid and a.attnum > 0 and not a.attisdropped
    ) x(next)
  ),
  leaves as (
    select y.oid::regtype::text as name, y.typtype from t join pg_type y on y.oid = t.oid
    where y.typtype in ('b', 'e', 'p') and not (y.typcategory = 'A' and y.typelem <> 0)
  ),
  needs as (
    select unnest(case
      when typtype = 'e' then '{}'::text[]
      when name in ('real', 'double precision', 'point', 'line', 'lseg', 'box', 'path', 'polygon',
        'circle') then '{extra_float_digits}'
      when name in ('date', 'time without time zone', 'time with time zone',
        'timestamp without time zone') then '{datestyle}'
      when name = 'timestamp with time zone' then '{datestyle,timezone}'
      when name = 'interval' then '{intervalstyle}'
      when name = 'bytea' then '{bytea_output}'
      when name = 'money' then '{lc_monetary}'
      when name in ('boolean', 'smallint', 'integer', 'bigint', 'numeric', 'oid', 'xid', 'xid8',
        'cid', 'tid', 'text', 'character varying', 'character', '"char"', 'name', 'uuid', 'json',
        'jsonb', 'jsonpath', 'inet', 'cidr', 'macaddr', 'macaddr8', 'bit', 'bit varying',
        'tsvector', 'tsquery', 'xml', 'pg_lsn', 'txid_snapshot', 'pg_snapshot')
        or name like 'reg%' then '{}'
      else '{extra_float_digits,datestyle,timezone,intervalstyle,bytea_output,lc_monetary}'
    end) as setting from leaves
  )
  select coalesce(array_agg(distinct setting order by setting), '{}') from needs
$$;

-- The capture trigger function of one table, generated when capture is turned on and again
-- after each schema change of the table: static SQL (planned once per session) that appends
-- each changed row's key and old image, and arms the transaction's commit stamp with its first
-- row. An update that brings in a key records it as inserted ('I'); one that moves a row to
-- another tenant records it under the new tenant too ('U', same old image), so the rebuild of
-- either tenant, which reads only its own tenant's changes, finds it. security definer: the
-- application's roles write the log without being granted it.
create function pitr.capture_function_sql(p_relid oid, p_tenant_column text, p_pk text[])
returns text
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_rel text := p_relid::regclass::text;  -- schema-qualified and quoted as needed
  v_ten text := format('%I', p_tenant_column);
  v_key text := pitr.key_text_sql(p_pk, 'r');
  v_nkey text := pitr.key_text_sql(p_pk, 'n');
  v_join text := (select string_agg(format('o.%1$I = n.%1$I', c), ' and ') from unnest(p_pk) c);
  v_none text := format('o.%I is null', p_pk[1]);  -- no old row with the new row's key
  v_ins text := 'insert into pitr.changes (changed_at, txid, tenant_id, relid, op, arms_commit, pk,
      old_row) ';
  v_log text;  -- the inserts, by operation, with p_arms as the arms_commit of each row
  v_body text;
begin
  -- row(r.*), not r: a column named r would be taken for the row.
  v_log := $l$
    if tg_op = 'INSERT' then
      %1$s select v_now, v_tx, r.%2$s::text, %3$s, 'I', %4$s, %5$s, null from pitr_new_rows r;
    elsif tg_op = 'UPDATE' then
      -- One statement, not two: each INSERT pays its own executor start and partition routing.
      %1$s select v_now, v_tx, r.%2$s::text, %3$s, 'U', %4$s, %5$s, row(r.*)::text
      from pitr_old_rows r
      union all
      select v_now, v_tx, n.%2$s::text, %3$s, case when %9$s then 'I' else 'U' end, false, %6$s,
        case when not %9$s then row(o.*)::text end
      from pitr_new_rows n left join pitr_old_rows o on %7$s
      where %9$s or o.%2$s is distinct from n.%2$s;
    elsif tg_op = 'DELETE' then
      %1$s select v_now, v_tx, r.%2$s::text, %3$s, 'D', %4$s, %5$s, row(r.*)::text
      from pitr_old_rows r;
    elsif tg_op = 'TRUNCATE' then
      -- Recorded, not refused: every row is logged as deleted before it goes.
      %1$s select v_now, v_tx, r.%2$s::text, %3$s, 'D', %4$s, %5$s, row(r.*)::text from %8$s r;
    end if;
    get diagnostics v_rows = row_count;$l$;
  v_body := format($b$
declare
  v_tx bigint := txid_current();
  v_now timestamptz := clock_timestamp();  -- after this statement's changes: its rows' time
  v_state text := current_setting('pitr.armed', true);
  v_arm boolean := false;
  v_rows bigint;
begin
  -- Armed before the insert (see pitr.stamp_commit): under SET CONSTRAINTS ... IMMEDIATE the
  -- stamp fires at the end of the insert itself.%1$s
  -- The row that arms the stamp is the first one (a window, measured at ~30 us a statement, so
  -- only in the statement that arms).
  if v_arm then%2$s
  else%3$s
  end if;
  if v_rows = 0 then
    perform set_config('pitr.armed', coalesce(v_state, ''), true);  -- nothing logged or armed
  end if;
  return null;
end
$b$, pitr.arm_sql(false),
    format(v_log, v_ins, v_ten, p_relid, 'row_number() over () = 1', v_key, v_nkey, v_join, v_rel,
      v_none),
    format(v_log, v_ins, v_ten, p_relid, 'false', v_key, v_nkey, v_join, v_rel, v_none));
  if position('$pitr_capture$' in v_body) > 0 then
    raise exception 'a name of % cannot be used in a capture trigger', v_rel using errcode = 'PT422';
  end if;
  -- Of the settings named at the top of this file, those that shape how this table's values are
  -- written (pitr.output_settings); the time kept in pitr.armed is written as a timestamptz too.
  return format('create or replace function pitr.%I() returns trigger language plpgsql
      security definer set search_path = pg_catalog, pg_temp set timezone = %L
      set datestyle = %L%s
      as $pitr_capture$%s$pitr_capture$',
    'capture_' || p_relid, 'UTC', 'ISO, YMD',
    (select string_agg(format(' set %s = %L', v.setting, v.value), '' order by v.setting)
     from unnest(pitr.output_settings(p_relid)) s(setting)
     join (values ('intervalstyle', 'postgres'), ('extra_float_digits', '3'),
       ('bytea_output', 'hex'), ('lc_monetary', 'C')) v(setting, value) using (setting)),
    v_body);
end
$$;

-- (Re)creates a captured table's capture function from the catalog as it is now, and records
-- the table's signature: its key as it is now, and its tenant column found by position in the
-- signature capture last knew, so that renaming either keeps the application's writes working.
create function pitr.regenerate_capture(p_relid oid) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v pitr.capture_tables := (select x from pitr.capture_tables x where x.relid = p_relid);
  v_attnum integer;
  v_tenant text;
  v_pk text[] := pitr.primary_key_of(p_relid);
begin
  select ((v.signature -> 'shape' -> 1 -> (i::integer - 1)) ->> 0)::integer into v_attnum
  from jsonb_array_elements_text(v.signature -> 'names') with ordinality x(n, i)
  where n = v.tenant_column;
  v_tenant := coalesce((select a.attname::text from pg_attribute a
      where a.attrelid = p_relid and a.attnum = v_attnum and not a.attisdropped),
    v.tenant_column);
  update pitr.capture_tables
  set signature = pitr.capture_signature(p_relid), tenant_column = v_tenant,
    primary_key = coalesce(v_pk, primary_key),
    table_schema = (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.oid = p_relid),
    table_name = (select c.relname from pg_class c where c.oid = p_relid)
  where relid = p_relid;
  if v_pk is null then
    return;  -- no key any more: the function as it was keeps working until the key is back
  end if;
  execute pitr.capture_function_sql(p_relid, v_tenant, v_pk);
  execute format('revoke execute on function pitr.%I() from public, anon, authenticated, service_role',
    'capture_' || p_relid);
end
$$;

-- Schema changes of captured tables, as they happen (where an event trigger may be created):
-- a change of shape is logged as an 'S' row, stamped with its transaction's commit like any
-- change, and a rebuild to a moment before it is refused; a rename is only noted in the
-- signature (a record text is read by position). Each change regenerates the capture function,
-- so the application's writes keep working after any ALTER TABLE. It never fails the
-- application's DDL: an error is only a warning, and the signature left behind makes the
-- rebuild refuse instead (see snapshot_table_at).
create function pitr.capture_ddl() returns event_trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp set timezone = 'UTC'
set datestyle = 'ISO, YMD' set lc_monetary = 'C' as $$
declare
  v pitr.capture_tables;
  v_sig jsonb;
  v_tx bigint;
  v_now timestamptz;  -- written as text under the settings above, read by pitr.stamp_commit
  v_state text;
  v_arm boolean;
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
        pitr.describe_shape_change(v.signature, v_sig)));
    end if;
    perform pitr.regenerate_capture(v.relid);
  end loop;
exception when others then
  raise warning 'pitr: could not record a schema change of a captured table: %', sqlerrm;
end
$$;
do $$
begin
  create event trigger pitr_capture_ddl on ddl_command_end
    when tag in ('ALTER TABLE', 'ALTER TYPE', 'DROP TYPE', 'ALTER DOMAIN', 'DROP DOMAIN',
      'ALTER EXTENSION', 'DROP EXTENSION')
    execute function pitr.capture_ddl();
  alter event trigger pitr_capture_ddl enable always;
exception when insufficient_privilege then
  raise notice 'pitr: no event trigger (%): a schema change of a captured table is found when a moment is rebuilt, and every moment before it is refused', sqlerrm;
end
$$;

-- A table named as in the service's answers: 'schema.table' as written, 'table' for public.
create function pitr.relid_by_name(p_table text) returns oid
language sql stable set search_path = pg_catalog, pg_temp as $$
  select coalesce(
    (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = case when p_table like '%.%' then split_part(p_table, '.', 1) else 'public' end
       and c.relname = case when p_table like '%.%' then substr(p_table, strpos(p_table, '.') + 1)
         else p_table end),
    0::oid)
$$;

create function pitr.capture_enable(p_table text) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_relid oid := pitr.relid_by_name(p_table);
  v_t record;
  v_pk text[];
  v_args text;
begin
  select * into v_t from pitr.protected_tables where relid = v_relid;
  if not found then
    raise exception '% is not a protected table', p_table using errcode = 'PT404';
  end if;
  v_pk := pitr.primary_key_of(v_relid);
  if v_pk is null then
    -- The log keeps old images by key, and the rebuild matches them to the live rows by key.
    raise exception 'table %.% has no primary key: capture needs one to match logged rows to live rows',
      v_t.table_schema, v_t.table_name using errcode = 'PT422';
  end if;
  if exists (select from pitr.capture_tables where relid = v_relid) then
    return;
  end if;
  perform pitr.ensure_change_partitions();
  execute pitr.capture_function_sql(v_relid, v_t.tenant_column, v_pk);
  v_args := format('pitr.%I', 'capture_' || v_relid);
  -- Triggers call it whatever the grants; nobody else may.
  execute format('revoke execute on function %s() from public, anon, authenticated, service_role',
    v_args);
  -- The registry row first: the ALTER TABLE below fires the event trigger, which compares.
  insert into pitr.capture_tables (relid, table_schema, table_name, tenant_column, primary_key,
    signature)
  values (v_relid, v_t.table_schema, v_t.table_name, v_t.tenant_column, v_pk,
    pitr.capture_signature(v_relid));
  execute format('create trigger pitr_capture_insert after insert on %I.%I
      referencing new table as pitr_new_rows for each statement execute function %s()',
    v_t.table_schema, v_t.table_name, v_args);
  execute format('create trigger pitr_capture_update after update on %I.%I
      referencing old table as pitr_old_rows new table as pitr_new_rows
      for each statement execute function %s()',
    v_t.table_schema, v_t.table_name, v_args);
  execute format('create trigger pitr_capture_delete after delete on %I.%I
      referencing old table as pitr_old_rows for each statement execute function %s()',
    v_t.table_schema, v_t.table_name, v_args);
  execute format('create trigger pitr_capture_truncate before truncate on %I.%I
      for each statement execute function %s()',
    v_t.table_schema, v_t.table_name, v_args);
  execute format('alter table %I.%I enable always trigger pitr_capture_insert,
      enable always trigger pitr_capture_update, enable always trigger pitr_capture_delete,
      enable always trigger pitr_capture_truncate', v_t.table_schema, v_t.table_name);
end
$$;

create function pitr.capture_disable(p_table text) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_c pitr.capture_tables;
begin
  select * into v_c from pitr.capture_tables where relid = pitr.relid_by_name(p_table);
  if not found then
    return;
  end if;
  delete from pitr.capture_tables where relid = v_c.relid;
  execute format('drop trigger if exists pitr_capture_insert on %1$I.%2$I;
    drop trigger if exists pitr_capture_update on %1$I.%2$I;
    drop trigger if exists pitr_capture_delete on %1$I.%2$I;
    drop trigger if exists pitr_capture_truncate on %1$I.%2$I', v_c.table_schema, v_c.table_name);
  execute format('drop function if exists pitr.%I()', 'capture_' || v_c.relid);
  -- Its log rows no longer describe a complete history.
  delete from pitr.changes where relid = v_c.relid;
end
$$;
-- Run as the database owner (SQL editor, psql, a migration); no API role may turn capture on.
revoke execute on function pitr.capture_enable(text), pitr.capture_disable(text)
  from public, anon, authenticated, service_role;

-- Where the log of the transactions stamped after p_at begins: their earliest change (a
-- transaction longer than a second is found by commits_long; a shorter one began after
-- p_at - 1 s).
create function pitr.log_from(p_at timestamptz) returns timestamptz
language sql stable set search_path = pg_catalog, pg_temp as $$
  select least(p_at - interval '1 second',
    (select min(since) from pitr.commits
     where committed_at > p_at and committed_at - since > interval '1 second'))
$$;

-- Why a captured table's log cannot rebuild p_at, in words naming the table and the schema
-- change (null when it can): a change of its columns committed after p_at (a rename does not
-- count: an image is read by position), or one no event trigger recorded, at a time unknown.
-- The message holds names and types only, never the DDL's text, which may hold values.
create function pitr.schema_change_after(p_relid oid, p_at timestamptz) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp set timezone = 'UTC' set datestyle = 'ISO, YMD'
set lc_monetary = 'C'
as $$
declare
  v pitr.capture_tables := (select x from pitr.capture_tables x where x.relid = p_relid);
  v_now jsonb := pitr.capture_signature(p_relid);
  v_ddl record;
begin
  if (v_now -> 'shape') is distinct from (v.signature -> 'shape') then
    return format('%s was altered when no event trigger could record it (%s): its change log cannot rebuild any moment before that; turn its capture off and on again to start a new log',
      p_relid::regclass, pitr.describe_shape_change(v.signature, v_now));
  end if;
  select c.old_row, x.committed_at into v_ddl
  from pitr.changes c join pitr.commits x on x.txid = c.txid  -- a schema change is always stamped
  where c.relid = p_relid and c.tenant_id is null and c.op = 'S'
    and c.changed_at >= pitr.log_from(p_at) and x.committed_at > p_at
  order by c.seq limit 1;
  if found then
    return format('%s was altered after that moment, at %s (%s): the log cannot rebuild a moment before a schema change of a captured table, except a column rename',
      p_relid::regclass, v_ddl.committed_at, v_ddl.old_row);
  end if;
  return null;
end
$$;

-- The tenant's rows of one table as they were at p_at, built from the rows now and the log of
-- the transactions stamped after p_at (an unstamped autocommit statement at its rows' time): a key they changed takes the old image of its first
-- change among them (none if that change was its insert); any other key is as it is now. The
-- first change is the one with the lowest seq: changes of one key are logged in the order they
-- happened, since each waited for the row lock of the one before. Keys are compared typed (the
-- logged text cast to the key's type), so equal keys match whatever their text. Refused with
-- PT423 when the columns changed since (pitr.schema_change_after). Stored like any snapshot (snapshot_table_from).
-- The SET clauses are the capture functions' settings (top of this file): the logged text is read
-- back exactly as it was written, whatever the session's own settings.
create function pitr.snapshot_table_at(p_snapshot uuid, p_position integer, p_relid oid,
  p_at timestamptz, p_store_tenant text default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = postgres set extra_float_digits = 3 set bytea_output = hex
set lc_monetary = 'C' set array_nulls = on set xmloption = content
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
  v_select := (select string_agg(format('l.%I', c.name), ', ') from pitr.live_columns(p_relid) c
    where not c.is_generated);
  -- store_rows runs this with nested loops off: the stamp is looked up per change by a subquery
  -- (a join would read every stamp of the retention window), and the old images are cast in a
  -- plain projection (a lateral join would be a nested loop, priced so high that it is compiled
  -- by JIT, measured at 2 s for five rows).
  return pitr.snapshot_table_from(p_snapshot, p_position, p_relid, format(
    '(with changed as materialized (
       select distinct on (%1$s) %2$s, c.op, c.old_row
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
     from generate_subscripts(v_pk, 1) i)),
    p_store_tenant);
end
$$;

-- The old log's rows, converted: the key's values as text, the old image read back with
-- jsonb_populate_record as the old rebuild read it (no more exact than it was) and kept as its
-- record text; each transaction stamped at its last logged change, as the old rebuild ordered
-- it. A table whose images cannot be read any more starts a new log now.
create function pitr.convert_jsonb_log() returns void
language plpgsql
set search_path = pg_catalog, pg_temp set timezone = 'UTC' set datestyle = 'ISO, YMD'
set intervalstyle = postgres set extra_float_digits = 3 set bytea_output = hex
set lc_monetary = 'C'
as $$
declare
  v record;
begin
  for v in select distinct j.relid, c.primary_key from pitr.changes_jsonb j
    left join pitr.capture_tables c on c.relid = j.relid
  loop
    begin
      if v.primary_key is null or not exists (select from pg_class where oid = v.relid) then
        continue;
      end if;
      execute format('insert into pitr.changes (seq, changed_at, txid, relid, op, tenant_id, pk,
          old_row)
        select j.seq, j.changed_at, j.txid, j.relid, j.op, j.tenant_id, %s,
          case when j.old_row is not null then jsonb_populate_record(null::%s, j.old_row)::text end
        from pitr.changes_jsonb j where j.relid = %s',
        case when cardinality(v.primary_key) = 1 then format('j.pk ->> %L', v.primary_key[1])
          else (select 'array[' || string_agg(format('j.pk ->> %L', k), ', ') || ']::text'
            from unnest(v.primary_key) k) end,
        v.relid::regclass, v.relid);
    exception when others then
      raise warning 'pitr: the change log of % cannot be converted (%); its log starts now',
        v.relid::regclass, sqlerrm;
      update pitr.capture_tables set enabled_at = clock_timestamp() where relid = v.relid;
    end;
  end loop;
  insert into pitr.commits (txid, since, committed_at)
  select j.txid, min(j.changed_at), max(j.changed_at) from pitr.changes_jsonb j group by j.txid;
end
$$;

do $$
declare
  v_first date := (select min(changed_at at time zone 'UTC')::date from pitr.changes_jsonb);
begin
  if v_first is not null then
    perform pitr.ensure_change_partitions(v_first, current_date - v_first + 1);
  end if;
  perform pitr.ensure_change_partitions();
  perform pitr.convert_jsonb_log();
end
$$;
drop function pitr.convert_jsonb_log();
drop table pitr.changes_jsonb;

-- The capture functions of tables captured before now wrote the old log: each is generated
-- again, in place, so its triggers keep firing without a gap.
do $$
declare
  v pitr.capture_tables;
begin
  for v in select * from pitr.capture_tables c where exists (select from pg_class where oid = c.relid)
  loop
    perform pitr.regenerate_capture(v.relid);
  end loop;
end
$$;
