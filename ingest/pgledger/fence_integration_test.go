package pgledger

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/internal/pglock"
)

// TestFenceProtocol walks the fence through what the restater and canopy
// rebuild do with it, against Begin.
func TestFenceProtocol(t *testing.T) {
	l, src, epoch := newLeasedLedger(t)
	f := &Fence{Pool: l.Pool}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	state := func() FenceState {
		t.Helper()
		st, err := f.State(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	batch := func(first, version int64) ingest.Intent {
		in := ingest.Intent{Source: src, HierarchyVersion: version, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}
		in.First, in.Last = first, first+9
		return in
	}

	// Raise moves the fence up, never down.
	if ok, err := f.Raise(ctx, 5); err != nil || !ok {
		t.Fatalf("Raise(5) = %v, %v", ok, err)
	}
	if ok, err := f.Raise(ctx, 3); err != nil || !ok {
		t.Fatalf("Raise(3) = %v, %v", ok, err)
	}
	if st := state(); st.Fence != 5 || st.RestatedThrough != 0 || !st.PausedUntil.IsZero() {
		t.Fatalf("state after Raise(5), Raise(3) = %+v, want fence 5", st)
	}
	if _, _, err := l.Begin(ctx, epoch, batch(0, 4), nil); !errors.Is(err, ingest.ErrHierarchyBehind) {
		t.Fatalf("Begin at version 4 below fence 5 = %v, want ErrHierarchyBehind", err)
	}
	in, _, err := l.Begin(ctx, epoch, batch(0, 5), nil)
	if err != nil || in.PendingVersion != 5 {
		t.Fatalf("Begin at the fence = %+v, %v; want pending 5 (restated through 0)", in, err)
	}

	// AwaitBatches(6) waits for the batch resolved with 5 until it is done;
	// AwaitBatches(5) has nothing to wait for.
	if err := f.AwaitBatches(ctx, 5, log); err != nil {
		t.Fatal(err)
	}
	awaited := make(chan error, 1)
	go func() { awaited <- f.AwaitBatches(ctx, 6, log) }()
	select {
	case err := <-awaited:
		t.Fatalf("AwaitBatches(6) returned %v with a batch at version 5 unfinished", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := l.Done(ctx, in.Source); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-awaited:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AwaitBatches(6) still waiting after the batch was done")
	}

	// Advance moves restated_through up, never down; a batch at a restated
	// version is not pending.
	if err := f.Advance(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := f.Advance(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if st := state(); st.RestatedThrough != 5 {
		t.Fatalf("restated_through after Advance(5), Advance(2) = %d, want 5", st.RestatedThrough)
	}
	in, _, err = l.Begin(ctx, epoch, batch(10, 5), nil)
	if err != nil || in.PendingVersion != 0 {
		t.Fatalf("Begin at a restated version = %+v, %v; want pending 0", in, err)
	}

	// Raise waits for a batch that read the state under the shared lock.
	tx, err := l.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select pg_advisory_xact_lock_shared($1)", pglock.Fence); err != nil {
		t.Fatal(err)
	}
	raised := make(chan error, 1)
	go func() { _, err := f.Raise(ctx, 6); raised <- err }()
	select {
	case err := <-raised:
		t.Fatalf("Raise returned (%v) while a batch holds the fence lock shared", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-raised; err != nil {
		t.Fatal(err)
	}

	// AwaitQuiet: an unfinished batch (10…19) and a fence (6) above
	// restated_through (5) keep it waiting; then it returns the progress.
	if _, err := f.AwaitQuiet(ctx, 200*time.Millisecond); err == nil || !strings.Contains(err.Error(), "offsets 10…19 is unfinished") {
		t.Fatalf("AwaitQuiet with a batch unfinished = %v", err)
	}
	if err := l.Done(ctx, ingest.Source{Topic: src.Topic, TopicID: src.TopicID, Partition: src.Partition, First: 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.AwaitQuiet(ctx, 200*time.Millisecond); err == nil || !strings.Contains(err.Error(), "up to 6 (done 5)") {
		t.Fatalf("AwaitQuiet with the restater behind = %v", err)
	}
	if err := f.Advance(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if v, err := f.AwaitQuiet(ctx, time.Second); err != nil || v != 6 {
		t.Fatalf("AwaitQuiet = %d, %v; want 6", v, err)
	}

	// A pause refuses new batches and holds the fence; Lift ends it.
	p, err := f.Pause(ctx, log)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Held() {
		t.Error("a pause just taken is not Held")
	}
	if st := state(); st.PausedUntil.Before(time.Now().Add(PauseFor / 2)) {
		t.Errorf("paused until %s, want about %s from now", st.PausedUntil, PauseFor)
	}
	if _, _, err := l.Begin(ctx, epoch, batch(20, 6), nil); !errors.Is(err, ingest.ErrPaused) {
		t.Fatalf("Begin while paused = %v, want ErrPaused", err)
	}
	if ok, err := f.Raise(ctx, 9); err != nil || ok {
		t.Fatalf("Raise while paused = %v, %v; want false", ok, err)
	}
	p.Lift()
	if st := state(); st.Fence != 6 || !st.PausedUntil.IsZero() {
		t.Fatalf("state after the pause = %+v, want fence 6, not paused", st)
	}
	if _, _, err := l.Begin(ctx, epoch, batch(20, 6), nil); err != nil {
		t.Fatalf("Begin after Lift = %v", err)
	}
	var n int
	if err := l.Pool.QueryRow(ctx, "select count(*) from canopy.ingest_intents").Scan(&n); err != nil || n != 3 {
		t.Fatalf("%d intents, %v; want 3", n, err)
	}
}
