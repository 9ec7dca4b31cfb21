-- With partitioned deduplication (ingest.dedup=partitioned) a backfill does
-- not write batches itself: it forwards each stride of its inputs to the
-- by-id topic, where the workers claim, write and acknowledge the records.
-- One row per forwarded stride lets a backfill killed and run again skip
-- what it forwarded already, so a rerun changes nothing (not even the dead
-- letters of records without an event id). Rows are kept as long as the
-- deduplication horizon: a rerun after that counts its events again, as it
-- would in the default mode.
create table if not exists canopy.forwarded_strides (
    src_topic     text        not null,
    src_partition integer     not null,
    first_offset  bigint      not null,
    last_offset   bigint      not null,
    records       integer     not null,
    forwarded_at  timestamptz not null default now(),
    primary key (src_topic, src_partition, first_offset)
);
