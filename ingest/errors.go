package ingest

import (
	"context"
	"errors"
	"fmt"
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
)

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

// Retryable decides whether a failure of a batch is worth retrying with the
// same records: everything but poison, fencing and a cancelled context is
// treated as transient (a sink or database that is down comes back).
func Retryable(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.Canceled), errors.Is(err, ErrFenced), errors.Is(err, ErrOverlap), errors.Is(err, ErrReplayMismatch):
		return false
	}
	_, p := IsPoison(err)
	return !p
}
