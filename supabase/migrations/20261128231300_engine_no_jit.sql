-- No JIT compilation inside the engine's functions (issue 12). The planner compiles a query when
-- its estimated cost passes jit_above_cost, and the estimate grows with the size of the tables,
-- not with the one tenant a query reads: beside 2,000 other tenants, the plan of a 10,000-row
-- tenant crossed the threshold and spent 10-11 ms of its 35 ms compiling (EXPLAIN ANALYZE of
-- pitr.table_diff, bench/fleet.bench.ts; the same query on the tenant alone: 14 ms, no JIT). A
-- tenant's queries read thousands of rows, where compiling never pays (the point-in-time build
-- measured 2 s of JIT for five rows, see pitr.snapshot_table_at).
-- Set on every engine function that already has SET clauses (those are never inlined, so this
-- changes nothing else), except the generated capture functions, which pitr.regenerate_capture
-- rewrites. A later migration that re-creates one of these functions must keep `set jit = off`:
-- CREATE OR REPLACE replaces the function's settings (tests/fleet.test.ts checks it).
do $$
declare
  v regprocedure;
begin
  for v in
    select p.oid::regprocedure from pg_proc p
    where p.pronamespace = 'pitr'::regnamespace and p.proconfig is not null
      and p.prokind = 'f' and p.proname !~ '^capture_\d+$'
      and not exists (select from unnest(p.proconfig) s where s like 'jit=%')
  loop
    execute format('alter function %s set jit = off', v);
  end loop;
end
$$;

revoke execute on all functions in schema pitr from public, anon, authenticated, service_role;
