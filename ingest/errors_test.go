package ingest

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
)

// One classifier: each error of the pipeline, wrapped as the Processor
// wraps it, maps to the kind the worker, the backfill and the publishers
// act on.
func TestClassify(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("events/3 offsets 10…20: %w", err) }
	for _, c := range []struct {
		err       error
		kind      Kind
		retryable bool
	}{
		{errors.New("dial tcp: connection refused"), Transient, true},
		{wrap(context.DeadlineExceeded), Transient, true},
		{wrap(ErrHierarchyBehind), Transient, true},
		{wrap(ErrPaused), Transient, true},
		{wrap(kerr.LeaderNotAvailable), Transient, true},
		{wrap(context.Canceled), Canceled, false},
		{wrap(ErrFenced), Fenced, false},
		{wrap(ErrOverlap), Parked, false},
		{wrap(ErrReplayMismatch), Parked, false},
		{wrap(poison(ClassInvalidJSON, "x")), Poison, false},
		{wrap(kerr.MessageTooLarge), Refused, false},
		{wrap(kerr.PolicyViolation), Refused, false},
	} {
		if got := Classify(c.err); got != c.kind {
			t.Errorf("Classify(%v) = %d, want %d", c.err, got, c.kind)
		}
		if got := Retryable(c.err); got != c.retryable {
			t.Errorf("Retryable(%v) = %v, want %v", c.err, got, c.retryable)
		}
	}
	if Retryable(nil) {
		t.Error("Retryable(nil)")
	}
	for _, c := range []struct {
		f    Failure
		kind Kind
	}{
		{Failure{Class: ClassUnknownEntity}, Transient},
		{Failure{Class: ClassUnknownEntity, Final: true}, Poison},
		{Failure{Class: ClassInvalidJSON}, Poison},
		{Failure{Class: ClassTooManyTypes}, Poison},
	} {
		if got := c.f.classify(); got != c.kind {
			t.Errorf("%s (final %v) classified %d, want %d", c.f.Class, c.f.Final, got, c.kind)
		}
	}
	// A decode error that is no PoisonError is still dead-lettered.
	if p := asPoison(errors.New("boom")); p.Class != ClassInvalidField || p.Msg != "undecodable: boom" {
		t.Errorf("asPoison = %+v", p)
	}
	if p := asPoison(poison(ClassBadDecimal, "amount")); p.Class != ClassBadDecimal || p.Msg != "amount" {
		t.Errorf("asPoison of a poison = %+v", p)
	}
}
