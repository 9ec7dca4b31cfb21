-- The ingest ledger: the transactional bookkeeping behind exactly-once
-- (docs/exactly-once.md). Written by workers and backfills, never by users.

-- One row per source partition. A new owner bumps the epoch; a batch whose
-- owner holds an older epoch is refused (zombie fencing).
create table if not exists canopy.partition_leases (
    src_topic     text        not null,
    src_partition integer     not null,
    epoch         bigint      not null,
    owner         text        not null,
    acquired_at   timestamptz not null default now(),
    primary key (src_topic, src_partition)
);

-- One row per batch, recorded before anything of the batch is written. A
-- replay of the batch reuses it: same range, same hierarchy version, same
-- ingest time, hence byte-identical blocks that ClickHouse deduplicates.
create table if not exists canopy.ingest_intents (
    src_topic         text        not null,
    src_partition     integer     not null,
    first_offset      bigint      not null,
    last_offset       bigint      not null,
    epoch             bigint      not null,
    hierarchy_version bigint      not null,
    created_at        timestamptz not null,
    done_at           timestamptz,
    primary key (src_topic, src_partition, first_offset)
);

-- One row per accepted event id: the first record to claim an id owns it; a
-- repeat anywhere else is a duplicate. Rows older than the deduplication
-- horizon (by occurred_at) are purged.
create table if not exists canopy.event_claims (
    event_id      text        not null primary key,
    occurred_at   timestamptz not null,
    src_topic     text        not null,
    src_partition integer     not null,
    src_offset    bigint      not null,
    claimed_at    timestamptz not null default now()
);
create index if not exists event_claims_source on canopy.event_claims (src_topic, src_partition, src_offset);
create index if not exists event_claims_occurred on canopy.event_claims (occurred_at);
