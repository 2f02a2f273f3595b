-- Supabase's default grants, as every project has them before its first migration: USAGE on
-- schema public for the API roles, and every new table, function and sequence of public granted
-- to them. Applied after the roles and auth helpers exist (the shims migration creates them where
-- missing); never applied by a migration.
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
