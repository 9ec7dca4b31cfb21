package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/ingest/idstate"
	"github.com/canopyhq/canopy/schema"
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
	routed := retries.got[0]
	routed.RetryAt = time.Time{} // the router's copy is due at once
	retry := EncodeFailure(routed)
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

type memMarkers struct{ got []*kgo.Record }

func (m *memMarkers) ProduceSync(_ context.Context, rs ...*kgo.Record) kgo.ProduceResults {
	m.got = append(m.got, rs...)
	out := make(kgo.ProduceResults, len(rs))
	for i, r := range rs {
		out[i].Record = r
	}
	return out
}

// A record that holds its id's claim and is dead-lettered for good frees the
// id: the by-id stage appends a release marker naming it, after which a new
// copy of the id owns it; copies before the marker stay duplicates, the
// marker itself is neither, and a new owner rebuilding from the log decides
// the same.
func TestPartitionedReleaseFreesDeadLetteredClaim(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	log := &logRestorer{}
	add := func(r Record) Record {
		r.Topic, r.Time = "byid", at.Add(time.Duration(r.Offset)*time.Second)
		log.log = append(log.log, r)
		return r
	}
	parents := map[int64]int64{1: 0}
	ledger := newMemLedger()
	p, sink, _ := partitionedProcessor(t, ledger, log, parents)
	p.Retry.MaxAttempts = 1 // an unknown entity is dead-lettered at once
	markers := &memMarkers{}
	p.Ledger.(*PartitionedClaims).Markers, p.Ledger.(*PartitionedClaims).Topic = markers, "byid"
	epoch, _ := ledger.Acquire(ctx, Source{Topic: "byid", Partition: 2}, "a")
	process := func(p *Processor, want Counts, recs ...Record) {
		t.Helper()
		before := len(sink.batches)
		if n, err := p.Process(ctx, epoch, recs); err != nil || n != len(recs) {
			t.Fatalf("Process = %d, %v", n, err)
		}
		if got := sink.batches[before].Counts; got != want {
			t.Fatalf("offsets %d…: counts %+v, want %+v", recs[0].Offset, got, want)
		}
	}

	process(p, Counts{Records: 2, Duplicates: 1, DeadLettered: 1},
		add(Record{Partition: 2, Offset: 0, Value: []byte(ev("x", 4, "2"))}),
		add(Record{Partition: 2, Offset: 1, Value: []byte(ev("x", 4, "2"))}))
	if len(markers.got) != 1 || string(markers.got[0].Key) != "x" || markers.got[0].Partition != 2 {
		t.Fatalf("markers %+v, want one for x in partition 2", markers.got)
	}
	if of, _ := header(markers.got[0].Headers, HeaderReleaseOf); of != "0" {
		t.Fatalf("marker releases offset %q, want 0", of)
	}
	parents[4] = 1 // the entity arrives; the producer sends x again
	marker := add(Record{Partition: 2, Offset: 2, Key: markers.got[0].Key, Headers: markers.got[0].Headers})
	process(p, Counts{Records: 3, Accepted: 1, Duplicates: 1},
		marker,
		add(Record{Partition: 2, Offset: 3, Value: []byte(ev("x", 4, "2"))}),
		add(Record{Partition: 2, Offset: 4, Value: []byte(ev("x", 4, "2"))}))
	if got := sink.batches[1].Events; len(got) != 1 || got[0].Offset != 3 {
		t.Fatalf("accepted %+v, want the copy after the marker", got)
	}

	// A forged marker naming an offset that is not the owner frees nothing.
	forged := add(Record{Partition: 2, Offset: 5, Key: []byte("x"), Headers: []kgo.RecordHeader{{Key: HeaderReleaseOf, Value: []byte("0")}}})
	process(p, Counts{Records: 2, Duplicates: 1}, forged, add(Record{Partition: 2, Offset: 6, Value: []byte(ev("x", 4, "2"))}))

	q, qsink, _ := partitionedProcessor(t, ledger, log, parents)
	epoch, _ = ledger.Acquire(ctx, Source{Topic: "byid", Partition: 2}, "b")
	sink = qsink
	process(q, Counts{Records: 1, Duplicates: 1}, add(Record{Partition: 2, Offset: 7, Value: []byte(ev("x", 4, "2"))}))
}

// chunkRestorer serves a partition's log in chunks of size records, calls
// after once each chunk is taken, and fails after failAfter chunks when
// failAfter > 0.
type chunkRestorer struct {
	log       []Record
	size      int
	failAfter int
	after     func()
}

func (c *chunkRestorer) Read(_ context.Context, _ int32, from int64, _ time.Time, to int64, fn func([]Record) error) error {
	var out []Record
	for _, r := range c.log {
		if r.Offset >= max(from, 0) && r.Offset < to {
			out = append(out, r)
		}
	}
	for i, chunks := 0, 0; i < len(out); i, chunks = i+c.size, chunks+1 {
		if c.failAfter > 0 && chunks == c.failAfter {
			return errors.New("broker gone")
		}
		if err := fn(out[i:min(i+c.size, len(out))]); err != nil {
			return err
		}
		c.after()
	}
	return nil
}

// A new owner's restore is visible while it reads: the records read and the
// records left are metrics after every chunk, it logs its progress, and the
// records left go back to 0 once the restore ends, finished or failed.
func TestPartitionedRestoreReportsProgress(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	const records, chunk, partition = 10, 3, 2
	var log []Record
	for off := range int64(records) {
		log = append(log, Record{Topic: "byid", Partition: partition, Offset: off,
			Value: []byte(ev(fmt.Sprintf("id-%d", off), 3, "1")), Time: at.Add(time.Duration(off) * time.Second)})
	}

	for _, failAfter := range []int{0, 2} {
		t.Run(fmt.Sprintf("failAfter=%d", failAfter), func(t *testing.T) {
			st, err := idstate.Open(t.TempDir(), idstate.Options{Horizon: 24 * time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			m := NewMetrics(prometheus.NewRegistry())
			var logs bytes.Buffer
			type seen struct{ read, left float64 }
			var got []seen
			r := &chunkRestorer{log: log, size: chunk, failAfter: failAfter, after: func() {
				got = append(got, seen{testutil.ToFloat64(m.restoredRecs), testutil.ToFloat64(m.restoreLeft)})
			}}
			c := &PartitionedClaims{State: st, Restore: r, Decoder: NewDecoder(schema.DefaultMeasures(), 0), Horizon: 24 * time.Hour,
				Metrics: m, Log: slog.New(slog.NewJSONHandler(&logs, nil)), ProgressEvery: time.Nanosecond}
			err = c.catchUp(ctx, partition, records, at)

			// The oracle: chunk k (from 1) ends at offset min(k·chunk, records).
			var want []seen
			for k := 1; k*chunk-chunk < records && (failAfter == 0 || k <= failAfter); k++ {
				end := min(k*chunk, records)
				want = append(want, seen{float64(end), float64(records - end)})
			}
			if !slices.Equal(got, want) {
				t.Errorf("(read, left) after each chunk = %v, want %v", got, want)
			}
			if left := testutil.ToFloat64(m.restoreLeft); left != 0 {
				t.Errorf("records left after the restore: %v, want 0", left)
			}
			var progress, restored int
			for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				var l struct {
					Msg        string
					Left, Next int64
				}
				if err := json.Unmarshal([]byte(line), &l); err != nil {
					t.Fatalf("log line %q: %v", line, err)
				}
				switch l.Msg {
				case "restoring event-id state from the by-id topic":
					progress++
					if l.Left != records-l.Next {
						t.Errorf("progress line %s: left %d, want %d", line, l.Left, records-l.Next)
					}
				case "event-id state restored from the by-id topic":
					restored++
				}
			}
			if failAfter > 0 {
				if err == nil {
					t.Fatal("catchUp succeeded over a failing read")
				}
				if progress != failAfter || restored != 0 || histCount(t, m) != 0 {
					t.Errorf("failed restore: %d progress lines, %d restored lines, %d restores timed; want %d, 0, 0",
						progress, restored, histCount(t, m), failAfter)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Every chunk but the last, which leaves nothing, logs progress.
			if wantProgress := len(want) - 1; progress != wantProgress || restored != 1 || histCount(t, m) != 1 {
				t.Errorf("%d progress lines, %d restored lines, %d restores timed; want %d, 1, 1", progress, restored, histCount(t, m), wantProgress)
			}
			// The rebuilt state refuses the ids it read.
			dup, err := c.claim(partition, []Claim{{EventID: "id-4", OccurredAt: at, Offset: records, Time: at.Add(time.Minute)}})
			if err != nil || dup[0] {
				t.Errorf("claiming id-4 again after the restore = %v, %v; want refused", dup, err)
			}
		})
	}
}

// histCount is how many restores the restore-time histogram observed.
func histCount(t *testing.T, m *Metrics) uint64 {
	t.Helper()
	var d dto.Metric
	if err := m.restores.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetHistogram().GetSampleCount()
}

// The records left are summed over the partitions restoring at once, each
// taking its own off when it ends.
func TestRestoreRemainingSumsPartitions(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	progress := func(p int32, to int64) *restoreProgress {
		return &restoreProgress{p: p, to: to, start: time.Now(), logged: time.Now(), every: time.Hour, log: slog.New(slog.DiscardHandler), m: m}
	}
	a, b := progress(1, 10), progress(2, 20)
	steps := []struct {
		do   func()
		left float64
	}{
		{func() { a.read(4, 4) }, 6},
		{func() { b.read(5, 5) }, 6 + 15},
		{func() { a.read(2, 6) }, 4 + 15},
		{a.done, 15}, // a failed: the next batch restores it again
		{func() { b.read(15, 20) }, 0},
		{b.done, 0},
	}
	for i, s := range steps {
		s.do()
		if got := testutil.ToFloat64(m.restoreLeft); got != s.left {
			t.Fatalf("step %d: records left %v, want %v", i, got, s.left)
		}
	}
	if got := testutil.ToFloat64(m.restoredRecs); got != 26 {
		t.Fatalf("records restored %v, want 26", got)
	}
}
