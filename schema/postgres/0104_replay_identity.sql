-- A replay owns only the claims its own batch made. An intent is purged a
-- day after it is done; the same offsets read again later (a backfill rerun,
-- offsets reset) make a new intent at the same first offset, and its replay
-- must not take the claims of the earlier, purged batch over those offsets
-- as its own (they were counted by that batch). Claims now name the batch
-- that made them by its intent's created_at.
alter table canopy.event_claims add column if not exists batch_created_at timestamptz;

-- What decides a batch's blocks besides its records, hierarchy version and
-- time: the measures, the suspended-ancestors policy and the block format.
-- A replay under a different one would write different blocks, which
-- ClickHouse would not recognise as repeats; it is refused instead.
alter table canopy.ingest_intents add column if not exists fingerprint text;
