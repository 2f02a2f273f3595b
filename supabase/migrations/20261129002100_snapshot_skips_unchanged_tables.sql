-- A snapshot's cost for a table the tenant has not written since its previous snapshot. A snapshot
-- compares every live row of the tenant with the store's open versions (the head: the rows as the
-- last snapshot read them) in one join, and stores what differs; in a fleet that snapshots every
-- tenant each night, most tables of most tenants have not changed since the night before, and the
-- join read both sides of each of them for nothing.
--
-- The head's snapshot recorded the horizon of its read (pitr.snapshot_horizons): a live row whose
-- xmin precedes it was read by that snapshot exactly as it is now. When no live row of the tenant
-- was written since (xmin within the horizon) and the tenant has as many rows as the head, the
-- live rows are the head's rows, and the snapshot records the table at the head as it is: one
-- probe for a row written since (it stops at the first) and one count, both by the tenant's index
-- (pitr.rows_if_unwritten), instead of the join. The
-- same assumption the restore's diff rests on (20261129000000_diff_since_snapshot.sql), with the
-- same guards: a head last written by a snapshot without a horizon (an undo, a moment from the
-- change log) or one too old is compared in full, and so is a table whose columns changed (its
-- snapshot goes to another store, with no head).

-- age() of the horizon of the snapshot that last wrote a tenant's head in a store, or null when the
-- head must be compared in full (the checks of pitr.horizon_age).
create function pitr.head_horizon_age(p_store_id bigint, p_tenant text) returns integer
language plpgsql stable set search_path = pg_catalog, pg_temp set jit = off as $$
declare
  v_age integer;
begin
  select age(((h.horizon::text::numeric % 4294967296)::bigint)::text::xid) into v_age
  from pitr.backup_store_heads hd
  join public.backup_snapshots s on s.seq = hd.head_seq
  join pitr.snapshot_horizons h on h.snapshot_id = s.id
  where hd.store_id = p_store_id and hd.tenant_id = p_tenant
    and h.xmin::text::numeric = h.taken_by::text::numeric % 4294967296
    and pg_snapshot_xmax(pg_current_snapshot())::text::numeric - h.horizon::text::numeric
      between 1 and 1073741824;
  if v_age is null or v_age <= 0 or v_age = 2147483647 then
    return null;
  end if;
  return v_age;
end
$$;

-- pitr.snapshot_table (20261128100200_engine_store.sql): the live rows checked against the head
-- first; the table at the head as it is when they match (a null source to
-- pitr.snapshot_table_from).
create or replace function pitr.snapshot_table(p_snapshot uuid, p_position integer, p_relid oid)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp set jit = off as $$
declare
  v_table record;
  v_tenant text := (select tenant_id from public.backup_snapshots where id = p_snapshot);
  v_pred text;
  v_store pitr.backup_stores;
  v_rows bigint;
  v_age integer;
  v_same boolean := false;
begin
  select * into v_table from pitr.protected_tables where relid = p_relid;
  if not found then
    raise exception 'table % is not protected', p_relid::regclass using errcode = 'PT404';
  end if;
  v_pred := pitr.tenant_predicate(p_relid, v_table.tenant_column, v_tenant);
  v_store := pitr.store_for(p_relid, null::smallint[]);
  v_age := pitr.head_horizon_age(v_store.id, v_tenant);
  if v_age is not null then
    v_rows := (select row_count from pitr.backup_store_heads
      where store_id = v_store.id and tenant_id = v_tenant);
    v_same := coalesce(pitr.rows_if_unwritten(format('%I.%I', v_table.table_schema,
      v_table.table_name), v_pred, v_age) = v_rows, false);
  end if;
  return pitr.snapshot_table_from(p_snapshot, p_position, p_relid,
    case when not v_same then format('(select %s from %I.%I l where %s)',
      (select string_agg(format('l.%I', c.name), ', ') from pitr.live_columns(p_relid) c
        where not c.is_generated),
      v_table.table_schema, v_table.table_name, v_pred) end,
    null, null::smallint[]);
end
$$;

-- pitr.snapshot_table_from (20261129001600_moments_before_added_columns.sql): a null source is the
-- head as it is (pitr.snapshot_table found the tenant's rows unchanged since it): only the head's
-- snapshot moves; everything else as it was.
create or replace function pitr.snapshot_table_from(p_snapshot uuid, p_position integer, p_relid oid,
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
  if p_source is null then
    update pitr.backup_store_heads set head_seq = v_snap.seq
    where store_id = v_store.id and tenant_id = coalesce(p_store_tenant, v_snap.tenant_id)
    returning row_count as stored_rows, row_count || ':' || hash_sum as stored_checksum
    into v_stored;
    if not found then
      raise exception 'no head of % for tenant % to snapshot as it is', p_relid::regclass,
        coalesce(p_store_tenant, v_snap.tenant_id);
    end if;
  else
    v_stored := pitr.store_rows(v_store.id, coalesce(p_store_tenant, v_snap.tenant_id), v_snap.seq,
      v_pk, p_source);
  end if;
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

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
