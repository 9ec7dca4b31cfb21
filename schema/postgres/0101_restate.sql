-- 0101_restate: bookkeeping of the restater, which corrects the rollups
-- after each hierarchy change (docs/hierarchy.md).
--
-- fence: no batch may record an intent resolved with an older hierarchy
--   version. The restater raises it before correcting changes up to it, then
--   waits for the unfinished intents below it, so the data it reads is final.
-- restated_through: every change with seq <= this is reflected in
--   rollup_daily_current, the as-was corrections and the ClickHouse entities
--   table.
-- Batches read both under a shared advisory lock (7161126307403202563 =
-- 'canopy' || 0x0003) that the restater takes exclusively to move the fence.
create table if not exists canopy.restate_state (
    id               integer primary key default 1 check (id = 1),
    fence            bigint      not null default 0,
    restated_through bigint      not null default 0,
    updated_at       timestamptz not null default now()
);
-- A database that already has history starts restating after it: its rows
-- were attributed before the restater existed (rollup_daily_current is then
-- rebuilt from events, see docs/hierarchy.md).
insert into canopy.restate_state (id, fence, restated_through)
select 1, coalesce(max(seq), 0), coalesce(max(seq), 0) from canopy.entity_history
on conflict do nothing;

-- The as-is tag of a batch: 0 when every change up to the batch's hierarchy
-- version was already restated when the batch began, else that version.
alter table canopy.ingest_intents add column if not exists asis_tag bigint not null default 0;

create index if not exists ingest_intents_open
    on canopy.ingest_intents (hierarchy_version) where done_at is null;
