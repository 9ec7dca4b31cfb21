package ingest

import (
	"context"
	"fmt"
	"time"

	"github.com/canopyhq/canopy/schema"
)

// Accepted is an event that counts, with the offset of the record that
// carried it.
type Accepted struct {
	Event
	Offset int64
}

// Counts are the outcomes of a batch's records, written to ingest_acks.
type Counts struct {
	Records      uint32
	Accepted     uint32
	Duplicates   uint32
	DeadLettered uint32
	Retried      uint32
}

// Batch is everything one source range writes. Every field is a function of
// the records and the batch's Intent, so an attempt and its replay are equal.
type Batch struct {
	Intent Intent
	Events []Accepted
	Hourly *Rollup
	Daily  *Rollup
	// AsIs is the daily rollup attributed through the hierarchy current at
	// the batch's version (rollup_daily_current); often the same as Daily.
	AsIs *Rollup
	// Coarser are the rollups of the configured grains coarser than daily
	// (schema.CoarserGrains: rollup_weekly), summed from Daily; none by
	// default.
	Coarser []GrainRollup
	Counts  Counts
}

// GrainRollup is the as-was rollup of one grain.
type GrainRollup struct {
	Grain  schema.Grain
	Rollup *Rollup
}

// Unit is the batch's identity inside rollup blocks (see schema.RollupColumns):
// its source range's start and the time its intent was recorded, which
// tells apart two batches over the same offsets (a range read again after
// the first batch's intent was purged). Batches begun before block format
// 2 (no fingerprint) keep the unit they were begun with.
func (b *Batch) Unit() string {
	if b.Intent.Fingerprint == "" {
		return fmt.Sprintf("%s/%d/%d", b.Intent.Topic, b.Intent.Partition, b.Intent.First)
	}
	return fmt.Sprintf("%s/%d/%d@%d", b.Intent.Topic, b.Intent.Partition, b.Intent.First, b.Intent.CreatedAt.Unix())
}

// Failure is a record that did not become an event.
type Failure struct {
	Source   Source // Source.First == Source.Last == the record's offset
	EventID  string // when it could be read
	EntityID int64  // when it could be read
	Key      []byte // the original record key
	Raw      []byte // truncated to TruncatedBytes when RawBytes > 0
	// RawBytes and RawSHA256 name the original payload of a truncated Raw.
	RawBytes  int
	RawSHA256 string
	Class     Class
	Message   string
	Attempts  uint32
	At        time.Time // this failure (ingest_failures.last_failure)
	First     time.Time // the record's first failure
	RetryAt   time.Time // when a retry is due
	// HoldsClaim marks a failure whose record holds the claim on EventID
	// in the by-id topic (PartitionedClaims), at offset Claim: its retry
	// carries Claim in HeaderRetryOf and takes the claim over.
	HoldsClaim bool
	Claim      int64
	// Final marks a failure that is dead-lettered, never retried: the
	// record came from a backfill (HeaderBackfill).
	Final bool
	// Resolution is "" for a failure; "replayed" marks the failure of
	// Source resolved by a successful replay.
	Resolution string
}

// Sink writes batches. Write must be idempotent for an identical batch: a
// replay after a crash writes the same batch again, and so may a zombie that
// lost its partition while writing (see docs/exactly-once.md).
type Sink interface {
	Write(ctx context.Context, b *Batch) error
	WriteFailures(ctx context.Context, fs []Failure) error
}

// DeadLetters publishes records that will never succeed to the dead-letter
// topic, with the original bytes and headers naming the failure.
type DeadLetters interface {
	Publish(ctx context.Context, fs []Failure) error
}
