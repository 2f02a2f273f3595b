-- A moment rebuilt from the change log could hold a row as it never was. Found by the exactness
-- fuzz (seed 2828, PITR_EXACT_RUNS=150, its run 140): a row of a table with a foreign key to itself
-- (ON UPDATE CASCADE) references itself; a statement changes its key (1 to -1000000) and the
-- cascade then changes its reference. PostgreSQL hands both changes to the statement's one firing
-- of the capture trigger: the old rows hold the row before (1) and the version between the two
-- changes (-1000000, still pointing at 1), the new rows that version and the last. The log took
-- the version between for the row -1000000 had before the statement, and the restore to a moment
-- before brought it back beside the row 1 (checked on PostgreSQL 15 with a trigger that prints its
-- transition tables). A second way to the same, checked the same way: a statement that a trigger
-- runs after another statement's changes (the application's own AFTER trigger writing the table)
-- fires its capture first, at trigger depth 2, so a row both changed is logged later change first,
-- and the rebuild (the first change of each key after the moment, by seq) reads the later change's
-- old image as the row at the moment.
--
-- Neither order can be told from the log afterwards, so the capture records it and a moment that
-- depends on it is refused (422 moment_order_unknown, pitr.moment_order_unknown) instead of
-- rebuilt wrong. Each logged row records the trigger depth of the statement that logged it
-- (pitr.changes.depth: 1 for a statement of the application, more for one a trigger ran), and 0 for
-- an update that holds a version it made itself (a key twice among its old rows or its new rows;
-- not where the cascade also changed the key the statement gave the row, a case left open: it
-- needs a key that includes a column of a foreign key with ON UPDATE CASCADE to the same table,
-- and a statement changing the key of both a row and the row it points to). A moment of a table is
-- refused when, after it, a row of the tenant was logged by such an update, or changed more than
-- once in one transaction with one of the changes logged at depth 2 or more. A row changed twice by
-- the application's own statements (an insert then an update, a restore's delete then insert) is
-- rebuilt as before: those are logged in the order they ran. Rows logged before this migration have
-- no depth and are taken as the application's own.

alter table pitr.changes add column depth smallint;

-- pitr.capture_function_sql (20261128100600_capture.sql): each row logged with its statement's
-- trigger depth; everything else as it was.
create or replace function pitr.capture_function_sql(p_relid oid, p_tenant_column text, p_pk text[])
returns text
language plpgsql stable set search_path = pg_catalog, pg_temp set jit = off as $$
declare
  v_rel text := p_relid::regclass::text;  -- schema-qualified and quoted as needed
  v_ten text := format('%I', p_tenant_column);
  v_key text := pitr.key_text_sql(p_pk, 'r');
  v_nkey text := pitr.key_text_sql(p_pk, 'n');
  v_join text := (select string_agg(format('o.%1$I = n.%1$I', c), ' and ') from unnest(p_pk) c);
  v_none text := format('o.%I is null', p_pk[1]);  -- no old row with the new row's key
  v_cols text := (select string_agg(format('r.%I', c), ', ') from unnest(p_pk) c);  -- the key
  v_ins text := 'insert into pitr.changes (changed_at, txid, tenant_id, relid, op, arms_commit, pk,
      old_row, depth) ';
  v_log text;  -- the inserts, by operation, with p_arms as the arms_commit of each row
  v_body text;
begin
  -- row(r.*), not r: a column named r would be taken for the row.
  v_log := $l$
    if tg_op = 'INSERT' then
      %1$s select v_now, v_tx, r.%2$s::text, %3$s, 'I', %4$s, %5$s, null, v_depth
      from pitr_new_rows r;
    elsif tg_op = 'UPDATE' then
      -- A key twice among the old rows or the new ones: a cascading foreign key of the table
      -- changed again a row the statement had changed, and PostgreSQL hands both changes to this
      -- one firing, the version between them among both. Its rows are marked 0: which image each
      -- key had before the statement is not known. (Counted by key, not joined by image: a join of
      -- the old and new rows tripled the capture of a 100-row update, bench:capture.)
      if exists (select from pitr_old_rows r group by %10$s having count(*) > 1)
          or exists (select from pitr_new_rows r group by %10$s having count(*) > 1) then
        v_depth := 0;
      end if;
      -- One statement, not two: each INSERT pays its own executor start and partition routing.
      %1$s select v_now, v_tx, r.%2$s::text, %3$s, 'U', %4$s, %5$s, row(r.*)::text, v_depth
      from pitr_old_rows r
      union all
      select v_now, v_tx, n.%2$s::text, %3$s, case when %9$s then 'I' else 'U' end, false, %6$s,
        case when not %9$s then row(o.*)::text end, v_depth
      from pitr_new_rows n left join pitr_old_rows o on %7$s
      where %9$s or o.%2$s is distinct from n.%2$s;
    elsif tg_op = 'DELETE' then
      %1$s select v_now, v_tx, r.%2$s::text, %3$s, 'D', %4$s, %5$s, row(r.*)::text, v_depth
      from pitr_old_rows r;
    elsif tg_op = 'TRUNCATE' then
      -- Recorded, not refused: every row is logged as deleted before it goes.
      %1$s select v_now, v_tx, r.%2$s::text, %3$s, 'D', %4$s, %5$s, row(r.*)::text, v_depth
      from %8$s r;
    end if;
    get diagnostics v_rows = row_count;$l$;
  v_body := format($b$
declare
  v_tx bigint := txid_current();
  v_now timestamptz := clock_timestamp();  -- after this statement's changes: its rows' time
  -- 1 for a statement of the application, more for one a trigger ran, 0 for an update whose
  -- changes cannot be told apart (below); see pitr.moment_order_unknown.
  v_depth smallint := pg_trigger_depth();
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
      v_none, v_cols),
    format(v_log, v_ins, v_ten, p_relid, 'false', v_key, v_nkey, v_join, v_rel, v_none, v_cols));
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

-- Each captured table's function again, with the depth, from its registry row as it is
-- (pitr.regenerate_capture would also record today's columns as the table's signature, and so
-- forget a change of them that the event trigger, where it is missing, never recorded).
do $$
declare
  v record;
begin
  for v in select relid, tenant_column, primary_key from pitr.capture_tables loop
    execute pitr.capture_function_sql(v.relid, v.tenant_column, v.primary_key);
    execute format('revoke execute on function pitr.%I() from public, anon, authenticated, service_role',
      'capture_' || v.relid);
  end loop;
end
$$;

-- Why the moment p_at of a tenant's rows of a captured table cannot be rebuilt exactly, or null:
-- a row of the tenant changed more than once in one transaction after p_at, one of the changes by a
-- statement a trigger ran (see the head of this file). Asked before the rebuild, over the changes
-- it would read.
create function pitr.moment_order_unknown(p_relid oid, p_tenant text, p_at timestamptz)
returns text
language plpgsql stable set search_path = pg_catalog, pg_temp set jit = off as $$
declare
  v_unknown boolean;
begin
  with changed as (
    select c.txid, c.pk, c.depth
    from pitr.changes c
    where c.relid = p_relid and c.tenant_id = p_tenant and c.changed_at >= pitr.log_from(p_at)
      and c.op in ('I', 'U', 'D')
      and coalesce((select x.committed_at from pitr.commits x where x.txid = c.txid),
        c.changed_at) > p_at)
  select exists (select from changed where depth = 0)
    or exists (select from changed group by txid, pk having count(*) > 1 and max(depth) > 1)
  into v_unknown;
  if not v_unknown then
    return null;
  end if;
  return format('a row of %s was changed more than once by one statement after %s, through a cascading foreign key or a trigger: the change log does not keep the order of those changes, so the table cannot be rebuilt as it was then; restore it from a snapshot',
    p_relid::regclass, p_at);
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
