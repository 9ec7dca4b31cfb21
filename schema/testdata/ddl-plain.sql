CREATE DATABASE IF NOT EXISTS canopy;
CREATE TABLE IF NOT EXISTS canopy.events (
    event_id String,
    entity_id UInt64,
    occurred_at DateTime('UTC'),
    type String,
    amount Decimal(18, 4),
    quantity Int64,
    margin Decimal(18, 2),
    ingested_at DateTime('UTC'),
    src_topic String,
    src_partition Int32,
    src_offset Int64,
    hierarchy_version Int64
) ENGINE = MergeTree() PARTITION BY toYYYYMM(occurred_at) ORDER BY (entity_id, occurred_at, event_id) SETTINGS index_granularity = 8192;
INSERT INTO canopy.events (event_id, entity_id, occurred_at, type, amount, quantity, margin, ingested_at, src_topic, src_partition, src_offset, hierarchy_version);
CREATE TABLE IF NOT EXISTS canopy.rollup_hourly (
    entity_id UInt64,
    bucket DateTime('UTC'),
    depth UInt8,
    type String,
    events Int64,
    amount Decimal(38, 4),
    quantity Int64,
    margin Decimal(38, 2),
    ingest_unit String
) ENGINE = SummingMergeTree() PARTITION BY toYYYYMM(bucket) ORDER BY (entity_id, bucket, depth, type) SETTINGS index_granularity = 8192;
INSERT INTO canopy.rollup_hourly (entity_id, bucket, depth, type, events, amount, quantity, margin, ingest_unit);
CREATE TABLE IF NOT EXISTS canopy.rollup_daily (
    entity_id UInt64,
    bucket Date,
    depth UInt8,
    type String,
    events Int64,
    amount Decimal(38, 4),
    quantity Int64,
    margin Decimal(38, 2),
    ingest_unit String
) ENGINE = SummingMergeTree() PARTITION BY toYYYYMM(bucket) ORDER BY (entity_id, bucket, depth, type) SETTINGS index_granularity = 8192;
INSERT INTO canopy.rollup_daily (entity_id, bucket, depth, type, events, amount, quantity, margin, ingest_unit);
CREATE TABLE IF NOT EXISTS canopy.rollup_daily_current (
    entity_id UInt64,
    bucket Date,
    depth UInt8,
    type String,
    events Int64,
    amount Decimal(38, 4),
    quantity Int64,
    margin Decimal(38, 2),
    pending_version UInt64,
    ingest_unit String
) ENGINE = SummingMergeTree() PARTITION BY toYYYYMM(bucket) ORDER BY (entity_id, bucket, depth, type, pending_version) SETTINGS index_granularity = 8192;
INSERT INTO canopy.rollup_daily_current (entity_id, bucket, depth, type, events, amount, quantity, margin, pending_version, ingest_unit);
CREATE TABLE IF NOT EXISTS canopy.entities (
    id UInt64,
    parent_id UInt64,
    name String,
    status String,
    level UInt8,
    path Array(UInt64),
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY id SETTINGS index_granularity = 8192;
INSERT INTO canopy.entities (id, parent_id, name, status, level, path, version);
CREATE TABLE IF NOT EXISTS canopy.entities_by_parent (
    id UInt64,
    parent_id UInt64,
    name String,
    status String,
    level UInt8,
    path Array(UInt64),
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY (parent_id, id) SETTINGS index_granularity = 8192;
INSERT INTO canopy.entities_by_parent (id, parent_id, name, status, level, path, version);
CREATE TABLE IF NOT EXISTS canopy.ingest_acks (
    topic String,
    partition Int32,
    first_offset Int64,
    last_offset Int64,
    records UInt32,
    accepted UInt32,
    duplicates UInt32,
    dead_lettered UInt32,
    retried UInt32,
    hierarchy_version Int64,
    processed_at DateTime('UTC'),
    topic_id String
) ENGINE = ReplacingMergeTree() ORDER BY (topic, partition, first_offset) SETTINGS index_granularity = 8192;
INSERT INTO canopy.ingest_acks (topic, partition, first_offset, last_offset, records, accepted, duplicates, dead_lettered, retried, hierarchy_version, processed_at, topic_id);
CREATE TABLE IF NOT EXISTS canopy.ingest_failures (
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    event_id String,
    entity_id UInt64,
    raw String,
    error_class String,
    error_message String,
    attempts UInt32,
    first_failure DateTime('UTC'),
    last_failure DateTime('UTC'),
    resolution String
) ENGINE = ReplacingMergeTree(last_failure) ORDER BY (source_topic, source_partition, source_offset) SETTINGS index_granularity = 8192;
INSERT INTO canopy.ingest_failures (source_topic, source_partition, source_offset, event_id, entity_id, raw, error_class, error_message, attempts, first_failure, last_failure, resolution);
