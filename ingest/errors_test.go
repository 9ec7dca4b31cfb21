package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
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

// A poll that reports the group fenced this member's instance ID stops the
// loop with ErrInstanceFenced; other fetch errors, FencedInstanceID among
// them only by name, do not.
func TestInstanceFenced(t *testing.T) {
	poll := func(errs ...error) kgo.Fetches {
		var parts []kgo.FetchPartition
		for i, err := range errs {
			parts = append(parts, kgo.FetchPartition{Partition: int32(i), Err: err}) //nolint:gosec // a few
		}
		return kgo.Fetches{{Topics: []kgo.FetchTopic{{Topic: "t", Partitions: parts}}}}
	}
	if err := instanceFenced(poll(), "g", "w-1"); err != nil {
		t.Fatalf("no errors: %v", err)
	}
	if err := instanceFenced(poll(kerr.UnknownTopicID, errors.New("FENCED_INSTANCE_ID")), "g", "w-1"); err != nil {
		t.Fatalf("other errors: %v", err)
	}
	err := instanceFenced(poll(kerr.UnknownTopicID, &kgo.ErrGroupSession{Err: kerr.FencedInstanceID}), "canopy", "w-1")
	if !errors.Is(err, ErrInstanceFenced) || !strings.Contains(err.Error(), `group canopy, instance "w-1"`) {
		t.Fatalf("fenced: %v", err)
	}
}
