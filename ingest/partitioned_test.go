package ingest

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/ingest/idstate"
)

// logRestorer serves a partition's log from memory.
type logRestorer struct{ log []Record }

func (l *logRestorer) Read(_ context.Context, _ int32, from int64, since time.Time, to int64, fn func([]Record) error) error {
	var out []Record
	for _, r := range l.log {
		if r.Offset < to && ((from >= 0 && r.Offset >= from) || (from < 0 && !r.Time.Before(since))) {
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return fn(out)
}

type memRetries struct{ got []Failure }

func (m *memRetries) PublishRetries(_ context.Context, fs []Failure) error {
	m.got = append(m.got, fs...)
	return nil
}

// partitionedProcessor is a Processor whose ids are claimed in a fresh local
// state over ledger, rebuilt from log when it lacks records.
func partitionedProcessor(t *testing.T, ledger Ledger, log *logRestorer, parents map[int64]int64) (*Processor, *memSink, *memRetries) {
	t.Helper()
	st, err := idstate.Open(t.TempDir(), idstate.Options{Horizon: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	p, _, _ := newTestProcessor()
	s, r := &memSink{}, &memRetries{}
	p.Sink, p.Resolver = s, &mapResolver{parent: parents, version: 7}
	p.Retry = RetryPolicy{Publisher: r}
	p.Ledger = &PartitionedClaims{Ledger: ledger, State: st, Restore: log, Decoder: p.Decoder, Horizon: 24 * time.Hour}
	return p, s, r
}

// The by-id stage's rules, through the Processor: the first decodable copy
// of an id owns it even while its entity is unknown; that copy's retry takes
// the claim over once, every other copy is a duplicate; and a new owner with
// empty state rebuilds it from the log and decides the same.
func TestPartitionedClaimsOwnership(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	log := &logRestorer{}
	rec := func(off int64, json string, headers ...kgo.RecordHeader) Record {
		r := Record{Topic: "byid", Offset: off, Value: []byte(json), Time: at.Add(time.Duration(off) * time.Second), Headers: headers}
		log.log = append(log.log, r)
		return r
	}
	parents := map[int64]int64{1: 0, 2: 1, 3: 2}
	ledger := newMemLedger()
	p, sink, retries := partitionedProcessor(t, ledger, log, parents)
	epoch, _ := ledger.Acquire(ctx, Source{Topic: "byid"}, "a")

	process := func(p *Processor, epoch int64, want Counts, recs ...Record) {
		t.Helper()
		s := p.Sink.(*memSink)
		before := len(s.batches)
		if n, err := p.Process(ctx, epoch, recs); err != nil || n != len(recs) {
			t.Fatalf("Process = %d, %v", n, err)
		}
		if got := s.batches[before].Counts; got != want {
			t.Fatalf("offsets %d…: counts %+v, want %+v; accepted %v", recs[0].Offset, got, want, s.batches[before].Events)
		}
	}
	// x's entity is unknown: its first copy holds the claim and is retried.
	process(p, epoch, Counts{Records: 5, Accepted: 1, Duplicates: 2, Retried: 1, DeadLettered: 1},
		rec(0, ev("a", 3, "1")), rec(1, ev("x", 4, "2")), rec(2, ev("a", 3, "1")), rec(3, ev("x", 4, "2")), rec(4, `{"event_id":"z"`))
	if len(retries.got) != 1 || !retries.got[0].HoldsClaim || retries.got[0].Claim != 1 {
		t.Fatalf("retries = %+v, want x's, holding the claim of offset 1", retries.got)
	}
	retry := failureHeaders(retries.got[0])
	parents[4] = 3 // the entity arrives
	r5 := rec(5, ev("x", 4, "2"), retry...)
	r6 := rec(6, ev("x", 4, "2"))
	r7 := rec(7, ev("x", 4, "2"), retry...) // the router copied the retry twice
	process(p, epoch, Counts{Records: 3, Accepted: 1, Duplicates: 2}, r5, r6, r7)
	if got := sink.batches[1].Events; len(got) != 1 || got[0].Offset != 5 {
		t.Fatalf("accepted %+v, want the retry at offset 5", got)
	}

	// A new owner, its state empty, rebuilds it from the log.
	q, _, _ := partitionedProcessor(t, ledger, log, parents)
	epoch, _ = ledger.Acquire(ctx, Source{Topic: "byid"}, "b")
	process(q, epoch, Counts{Records: 4, Accepted: 1, Duplicates: 3},
		rec(8, ev("a", 3, "1")), rec(9, ev("x", 4, "2")), rec(10, ev("y", 2, "5")), rec(11, ev("x", 4, "2"), retry...))
}
