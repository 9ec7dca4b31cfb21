package ingest

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Class names a kind of failure. It is written to the dead-letter headers and
// to ingest_failures.error_class, so the values are part of the contract.
type Class string

// Poison classes: the record can never succeed as it is.
const (
	ClassOversize      Class = "oversize"
	ClassInvalidUTF8   Class = "invalid_utf8"
	ClassInvalidJSON   Class = "invalid_json"
	ClassNotObject     Class = "not_object"
	ClassDuplicateKey  Class = "duplicate_key"
	ClassMissingField  Class = "missing_field"
	ClassWrongType     Class = "wrong_type"
	ClassInvalidField  Class = "invalid_field"
	ClassBadTimestamp  Class = "bad_timestamp"
	ClassBadDecimal    Class = "bad_decimal"
	ClassOverflow      Class = "overflow"
	ClassUnknownEntity Class = "unknown_entity"
	// ClassTooManyTypes: the event's batch had Processor.MaxTypes other
	// types already.
	ClassTooManyTypes Class = "too_many_types"
)

// Sentinel errors of the pipeline.
var (
	// ErrFenced means another worker took the partition over (a newer lease
	// epoch): this worker must abandon the batch without writing anything.
	ErrFenced = errors.New("ingest: partition lease lost to a newer owner")
	// ErrHierarchyBehind means the in-memory hierarchy is older than the
	// version a replayed batch was first resolved with; wait and retry.
	ErrHierarchyBehind = errors.New("ingest: hierarchy older than the batch being replayed")
	// ErrPaused means canopy rebuild is swapping rollup partitions: no new
	// batch may start until it is done (batches already recorded may
	// finish). Ledger.Begin returns it; Processor.Process waits and retries.
	ErrPaused = errors.New("ingest: paused while canopy rebuild swaps rollups")
	// ErrOverlap means the committed position falls inside a batch recorded
	// by an earlier attempt that did not start there (offsets moved by hand).
	ErrOverlap = errors.New("ingest: position falls inside an earlier batch")
	// ErrReplayMismatch means an unfinished batch was begun under other
	// measures, another suspended-ancestors policy or another block format
	// than this process has: replaying it would write blocks ClickHouse
	// cannot recognise as repeats of those already written. The batch waits
	// for a process with the configuration it was begun with.
	ErrReplayMismatch = errors.New("ingest: unfinished batch was begun under another configuration")
	// ErrTopicGone means the by-id topic was deleted, or deleted and
	// created again, while the router wrote to it. Retrying cannot help:
	// the workers' offsets and local event-id state belong to the old
	// topic. Only a restart, which creates the topic and forgets the stale
	// state, continues.
	ErrTopicGone = errors.New("ingest: the by-id topic was deleted or created again while in use")
	// ErrInstanceFenced means another member joined the group under this
	// member's instance ID (static membership): two workers were given
	// one kafka.instance_id. Rejoining would push the other out in turn,
	// for as long as both run.
	ErrInstanceFenced = errors.New("ingest: another member of the group joined with this member's instance ID")
)

// instanceFenced returns an error wrapping ErrInstanceFenced when a poll
// reports that the group fenced this member's instance ID.
func instanceFenced(fetches kgo.Fetches, group, id string) error {
	var err error
	fetches.EachError(func(_ string, _ int32, e error) {
		if err == nil && errors.Is(e, kerr.FencedInstanceID) {
			err = fmt.Errorf("%w: group %s, instance %q; give each worker a kafka.instance_id of its own", ErrInstanceFenced, group, id)
		}
	})
	return err
}

// PoisonError is a record that can never succeed as it is. It goes to the
// dead-letter topic at once, with Class and the message.
type PoisonError struct {
	Class Class
	Msg   string
}

func (e *PoisonError) Error() string { return string(e.Class) + ": " + e.Msg }

func poison(c Class, format string, args ...any) *PoisonError {
	return &PoisonError{Class: c, Msg: fmt.Sprintf(format, args...)}
}

// IsPoison reports whether err is a PoisonError and returns it.
func IsPoison(err error) (*PoisonError, bool) {
	var p *PoisonError
	ok := errors.As(err, &p)
	return p, ok
}

// Kind is what an error calls for. Classify is the one classifier of
// ingest errors: the worker's handling of a failed batch, the backfill's
// retries (Retryable), the routing of a batch's failed records (route) and
// the publishers' handling of Kafka's refusals (PermanentProduceError) all
// decide by it.
type Kind int

const (
	// Transient: the same thing may succeed later (a server down or
	// restarting, a timeout, the hierarchy behind a replay, a pause): retry
	// it after a backoff. A record's transient failure (its entity not in
	// the hierarchy yet) goes to the retry topic while its attempts and age
	// allow.
	Transient Kind = iota
	// Poison: the record can never succeed as it is; it is dead-lettered at
	// once (a *PoisonError, or a record failure of any other class).
	Poison
	// Refused: a topic refuses the record for good (too large or invalid
	// for it); producing it again cannot succeed.
	Refused
	// Fenced: another worker owns the partition (ErrFenced): abandon the
	// batch, write nothing.
	Fenced
	// Parked: the batch cannot go on in this process as things are
	// (ErrOverlap, ErrReplayMismatch): the partition waits, at the longest
	// rest, for an operator or a process with the batch's configuration.
	Parked
	// Canceled: the context ended; stop.
	Canceled
)

// Classify says what err calls for (see Kind). nil is Transient only by
// convention: callers test for nil first.
func Classify(err error) Kind {
	switch {
	case err == nil:
		return Transient
	case errors.Is(err, context.Canceled):
		return Canceled
	case errors.Is(err, ErrFenced):
		return Fenced
	case errors.Is(err, ErrOverlap), errors.Is(err, ErrReplayMismatch):
		return Parked
	case PermanentProduceError(err):
		return Refused
	}
	if _, ok := IsPoison(err); ok {
		return Poison
	}
	return Transient
}

// classify is Classify for a record's failure: an entity not in the
// hierarchy yet is transient unless the failure is final (a backfill's
// record); every other class is poison.
func (f *Failure) classify() Kind {
	if f.Class == ClassUnknownEntity && !f.Final {
		return Transient
	}
	return Poison
}

// Retryable reports whether a failure of a batch is worth retrying with the
// same records: Classify says Transient (a sink or database that is down
// comes back).
func Retryable(err error) bool {
	return err != nil && Classify(err) == Transient
}

// asPoison is the PoisonError of a record the Decoder refused. Every error
// of Decode is one; anything else would be a fault of the decoder with this
// record, which no retry changes, so it is dead-lettered as an invalid field.
func asPoison(err error) *PoisonError {
	if p, ok := IsPoison(err); ok {
		return p
	}
	return poison(ClassInvalidField, "undecodable: %v", err)
}

// PermanentProduceError reports whether a produce error can never clear by
// trying the same record again: the record is too large or invalid for the
// topic (Classify's Refused). Everything else (brokers down, leadership
// moving, authorization an operator may grant) is transient.
func PermanentProduceError(err error) bool {
	return errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) ||
		errors.Is(err, kerr.InvalidRecord) || errors.Is(err, kerr.CorruptMessage) ||
		errors.Is(err, kerr.InvalidTopicException) || errors.Is(err, kerr.PolicyViolation)
}
