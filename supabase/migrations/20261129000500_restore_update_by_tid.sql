-- pitr.restore_update reads the batch's snapshot rows by TID. Priced at random_page_cost each,
-- 3,000 TIDs cost more than a sequential scan of a small store, and the planner read every
-- version of every tenant in the store to find them: 21 ms of a 5% drift restore of 100,000 rows
-- on PostgreSQL 15 (EXPLAIN ANALYZE through auto_explain), a cost that grows with the store.
-- With sequential scans off it fetches them by TID (the restore's write phase: 59 ms to 45 ms,
-- median of 5). Index and bitmap scans were already off there, and restore_write's inserts
-- already turn sequential scans off the same way.
alter function pitr.restore_update(bigint, tid[], tid[]) set enable_seqscan = off;
