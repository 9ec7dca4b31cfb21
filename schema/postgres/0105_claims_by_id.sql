-- A replay finds its batch's claims by their event ids, through the primary
-- key (ingest/pgledger, Begin), so the index on the claims' source offsets,
-- which served only that rare read, goes: it was 135 of the 362 bytes a
-- claim took (36-byte ids, measured at 200,000 claims) and an index
-- insertion per accepted event.
drop index if exists canopy.event_claims_source;
