-- canopy rebuild pauses new batches while it swaps rollup partitions: a
-- batch may not begin (and the restater may not raise its fence) while
-- paused_until is in the future. rebuild renews it every few seconds, so a
-- rebuild that dies stops pausing within half a minute.
alter table canopy.restate_state add column if not exists paused_until timestamptz;
