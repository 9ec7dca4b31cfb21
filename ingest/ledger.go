package ingest

import (
	"context"
	"time"
)

// Source names a contiguous range of records of one partition: the unit that
// is processed, written, acknowledged and replayed as a whole.
type Source struct {
	Topic string
	// TopicID identifies the incarnation of the topic (Kafka's topic id), so a
	// topic deleted and created again, or the same name on another cluster,
	// is never mistaken for the one whose offsets the ledger remembers.
	TopicID   string
	Partition int32
	First     int64 // first offset, inclusive
	Last      int64 // last offset, inclusive
}

// Intent is the durable record of a batch made before anything of it is
// written. A replay of the same source range reuses it, so the replay
// accepts the same events, resolves them against the same hierarchy version
// and stamps the same ingest time: it produces byte-identical blocks.
type Intent struct {
	Source
	HierarchyVersion int64
	// PendingVersion tags the batch's rollup_daily_current rows: 0 when
	// every hierarchy change up to HierarchyVersion had been restated when
	// the batch began, else HierarchyVersion (docs/hierarchy.md). Begin sets
	// it.
	PendingVersion int64
	CreatedAt      time.Time // becomes events.ingested_at and ingest_acks.processed_at
	// Fingerprint names what decides the batch's blocks besides its records,
	// hierarchy version and time (Processor.Fingerprint); a replay under
	// another one is refused with ErrReplayMismatch. "" for intents recorded
	// before it was kept.
	Fingerprint string
	Replay      bool // an earlier attempt recorded this intent
	Done        bool // that attempt finished: every block and the ack are written
}

// Claim asks for ownership of an event id by the record carrying it.
type Claim struct {
	EventID    string
	OccurredAt time.Time
	Offset     int64
	// Time is the record's log timestamp: the by-id topic's horizon is
	// measured in it (PartitionedClaims).
	Time time.Time
	// RetryOf is the offset of the claim this record retries (the record
	// carries HeaderRetryOf), or -1. Only PartitionedClaims reads it.
	RetryOf int64
	// Release marks a release marker (HeaderReleaseOf): it frees the claim
	// at RetryOf rather than asking for one.
	Release bool
}

// Ledger is the transactional bookkeeping behind exactly-once: partition
// leases that fence zombies, batch intents, and event-id claims that make a
// repeated event count once wherever it arrives. Implementations must be
// safe for concurrent use.
type Ledger interface {
	// Acquire takes the lease of a partition for a new owner and returns its
	// epoch. Every later Begin of an older epoch fails with ErrFenced.
	Acquire(ctx context.Context, src Source, owner string) (epoch int64, err error)
	// Intent returns the recorded intent that contains offset src.First, if any:
	// usually one starting there (a replay), or one that started earlier when
	// offsets were moved by hand. Failing that, it returns the first intent
	// that starts after src.First up to src.Last, so a new batch can stop
	// before it: no offset may belong to two batches.
	Intent(ctx context.Context, src Source) (in Intent, found bool, err error)
	// Begin atomically checks the lease epoch, records the intent (or finds
	// the one an earlier attempt recorded), claims the event ids of a new
	// batch, and returns the offsets within src whose records own their
	// event id. On a replay no new claim is made: of the ids in claims (the
	// batch's records, as for a new batch), it returns the offsets whose
	// claim this very batch made. It fails with ErrFenced
	// when the epoch is stale, and with ErrHierarchyBehind when a new
	// batch's hierarchy version is below the restater's fence; then nothing
	// was recorded.
	Begin(ctx context.Context, epoch int64, in Intent, claims []Claim) (Intent, *Owned, error)
	// Done marks the batch complete. Losing this call only costs an
	// identical, deduplicated replay.
	Done(ctx context.Context, src Source) error
}
