-- The hourly purge of event_claims finds old claims by claimed_at, which
-- grows with insertion order: a BRIN index of a few pages serves it. The
-- btree on occurred_at it replaces took a random-position insert for every
-- claimed event (occurred_at spans days within one batch), the largest
-- share of the ledger's write cost after the primary key.
drop index if exists canopy.event_claims_occurred;
create index if not exists event_claims_claimed on canopy.event_claims using brin (claimed_at);
