package ingest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/schema"
)

// memLedger is an in-memory Ledger with the same contract as pgledger:
// everything is keyed by the source log (topic and topic id) and partition.
type memLedger struct {
	mu      sync.Mutex
	epoch   map[logPartition]int64
	intents map[logPartition]map[int64]Intent // by first offset
	claims  map[string]claimOwner             // event id → owning record
	paused  int                               // Begins to refuse with ErrPaused
}

type logPartition struct {
	topic, log string
	partition  int32
}

type claimOwner struct {
	lp     logPartition
	offset int64
	batch  time.Time // the claiming intent's CreatedAt
}

func lpOf(src Source) logPartition { return logPartition{src.Topic, src.TopicID, src.Partition} }

func newMemLedger() *memLedger {
	return &memLedger{epoch: map[logPartition]int64{}, intents: map[logPartition]map[int64]Intent{}, claims: map[string]claimOwner{}}
}

func (l *memLedger) Acquire(_ context.Context, src Source, _ string) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.epoch[lpOf(src)]++
	return l.epoch[lpOf(src)], nil
}

func (l *memLedger) Intent(_ context.Context, src Source) (Intent, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var next *Intent
	for _, in := range l.intents[lpOf(src)] {
		if in.First <= src.First && src.First <= in.Last {
			return in, true, nil
		}
		if in.First > src.First && in.First <= src.Last && (next == nil || in.First < next.First) {
			next = &in
		}
	}
	if next != nil {
		return *next, true, nil
	}
	return Intent{}, false, nil
}

func (l *memLedger) Begin(_ context.Context, epoch int64, in Intent, claims []Claim) (Intent, *Owned, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lp := lpOf(in.Source)
	if l.epoch[lp] != epoch {
		return in, nil, ErrFenced
	}
	if l.paused > 0 {
		l.paused--
		return in, nil, ErrPaused
	}
	if l.intents[lp] == nil {
		l.intents[lp] = map[int64]Intent{}
	}
	if got, ok := l.intents[lp][in.First]; ok {
		in = got
	} else {
		in.Replay = true // as stored: a later reader sees a replay
		l.intents[lp][in.First] = in
		in.Replay = false
		for _, c := range claims {
			if _, taken := l.claims[c.EventID]; !taken {
				l.claims[c.EventID] = claimOwner{lp, c.Offset, in.CreatedAt}
			}
		}
	}
	owned := NewOwned(in.Source)
	for _, o := range l.claims {
		if o.lp == lp && o.offset >= in.First && o.offset <= in.Last && o.batch.Equal(in.CreatedAt) {
			owned.Add(o.offset)
		}
	}
	return in, owned, nil
}

func (l *memLedger) Done(_ context.Context, src Source) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	in := l.intents[lpOf(src)][src.First]
	in.Done = true
	l.intents[lpOf(src)][src.First] = in
	return nil
}

// memSink records written batches; failNext makes the next Write fail.
type memSink struct {
	mu       sync.Mutex
	batches  []*Batch
	failures []Failure
	failNext bool
}

func (s *memSink) Write(_ context.Context, b *Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failNext {
		s.failNext = false
		return errors.New("clickhouse unavailable")
	}
	s.batches = append(s.batches, b)
	return nil
}

func (s *memSink) WriteFailures(_ context.Context, fs []Failure) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, fs...)
	return nil
}

type memDLQ struct{ n int }

func (d *memDLQ) Publish(_ context.Context, fs []Failure) error { d.n += len(fs); return nil }

// mapResolver: parent links, no history; version is settable.
type mapResolver struct {
	parent  map[int64]int64
	version int64
}

func (r *mapResolver) Version() int64 { return r.version }
func (r *mapResolver) Ancestors(id int64, _ time.Time, _ int64, dst []Ancestor) ([]Ancestor, bool) {
	if _, ok := r.parent[id]; !ok {
		return dst, false
	}
	for d := 0; id != 0; d++ {
		dst = append(dst, Ancestor{ID: id, Depth: uint8(d)})
		id = r.parent[id]
	}
	return dst, true
}

func record(off int64, json string) Record {
	return Record{Topic: "t", Partition: 0, Offset: off, Value: []byte(json)}
}

func ev(id string, entity int, amount string) string {
	return fmt.Sprintf(`{"event_id":%q,"entity_id":%d,"occurred_at":"2026-11-26T10:15:00Z","type":"sale","amount":%q}`, id, entity, amount)
}

// failFirstWrite processes recs while the sink refuses the write: the
// batch's intent is recorded and the batch left unfinished.
func failFirstWrite(t *testing.T, p *Processor, s *memSink, epoch int64, recs []Record) {
	t.Helper()
	s.failNext = true
	if _, err := p.Process(context.Background(), epoch, recs); err == nil {
		t.Fatal("Process succeeded with a failing sink")
	}
}

func newTestProcessor() (*Processor, *memLedger, *memSink) {
	l, s := newMemLedger(), &memSink{}
	return &Processor{
		Decoder:  NewDecoder(schema.DefaultMeasures(), 0),
		Resolver: &mapResolver{parent: map[int64]int64{1: 0, 2: 1, 3: 2}, version: 7},
		Ledger:   l,
		Sink:     s,
		DLQ:      &memDLQ{},
		Now:      func() time.Time { return time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC) },
	}, l, s
}

func TestProcessFansOutAndDeduplicates(t *testing.T) {
	p, l, s := newTestProcessor()
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
	recs := []Record{
		record(10, ev("a", 3, "1.50")),
		record(11, ev("b", 2, "2")),
		record(12, ev("a", 3, "1.50")), // repeat in the batch
		record(13, `{not json`),
		record(14, ev("c", 99, "1")), // unknown entity
	}
	n, err := p.Process(context.Background(), epoch, recs)
	if err != nil || n != 5 {
		t.Fatalf("Process = %d, %v", n, err)
	}
	b := s.batches[0]
	if want := (Counts{Records: 5, Accepted: 2, Duplicates: 1, DeadLettered: 2}); b.Counts != want {
		t.Fatalf("counts = %+v, want %+v", b.Counts, want)
	}
	// a (entity 3) fans out to 3,2,1 at depths 0,1,2; b (entity 2) to 2,1.
	got := map[RollupKey]int64{}
	for i, k := range b.Daily.Keys {
		got[k] = b.Daily.Sums[0][i].Big().Int64()
	}
	day := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC).Unix()
	want := map[RollupKey]int64{
		{3, day, 0, "sale"}: 15000,
		{2, day, 1, "sale"}: 15000,
		{1, day, 2, "sale"}: 15000,
		{2, day, 0, "sale"}: 20000,
		{1, day, 1, "sale"}: 20000,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("daily sums = %v, want %v", got, want)
	}
	// A later batch repeating "b" elsewhere counts it as a duplicate.
	n, err = p.Process(context.Background(), epoch, []Record{record(15, ev("b", 2, "2"))})
	if err != nil || n != 1 || s.batches[1].Counts.Accepted != 0 || s.batches[1].Counts.Duplicates != 1 {
		t.Fatalf("repeat: n=%d err=%v counts=%+v", n, err, s.batches[1].Counts)
	}
}

// A batch that failed after its intent was recorded is replayed with the
// same range, claims, version and time even if more records and a newer
// hierarchy arrived meanwhile: the written batch is identical.
func TestProcessReplayIsIdentical(t *testing.T) {
	p, l, s := newTestProcessor()
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
	recs := []Record{record(0, ev("a", 3, "1")), record(1, ev("b", 2, "2"))}
	failFirstWrite(t, p, s, epoch, recs)
	// Meanwhile: a newer hierarchy, a later clock, more records fetched.
	p.Resolver.(*mapResolver).version = 9
	p.Now = func() time.Time { return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) }
	more := append(recs, record(2, ev("c", 1, "3")))
	n, err := p.Process(context.Background(), epoch, more)
	if err != nil || n != 2 {
		t.Fatalf("replay consumed %d, %v; want exactly the recorded 2", n, err)
	}
	first := s.batches[0]
	if first.Intent.HierarchyVersion != 7 || !first.Intent.CreatedAt.Equal(time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("replay used intent %+v", first.Intent)
	}
	// The same records once more (a zombie, or a lost Done) are skipped or
	// rebuilt identically.
	l.intents[lpOf(first.Intent.Source)][0] = Intent{Source: first.Intent.Source, HierarchyVersion: 7, CreatedAt: first.Intent.CreatedAt, Fingerprint: first.Intent.Fingerprint, Replay: true}
	if _, err := p.Process(context.Background(), epoch, recs); err != nil {
		t.Fatal(err)
	}
	again := s.batches[1]
	again.Intent.Replay, first.Intent.Replay = false, false
	if !reflect.DeepEqual(first, again) {
		t.Fatalf("replayed batch differs:\n%+v\n%+v", first, again)
	}
	// Once done, the range is skipped without writing.
	_ = l.Done(context.Background(), first.Intent.Source)
	n, err = p.Process(context.Background(), epoch, recs)
	if err != nil || n != 2 || len(s.batches) != 2 {
		t.Fatalf("done range: n=%d err=%v writes=%d", n, err, len(s.batches))
	}
}

func TestProcessFencedWritesNothing(t *testing.T) {
	p, l, s := newTestProcessor()
	old, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "zombie")
	_, _ = l.Acquire(context.Background(), Source{Topic: "t"}, "new owner")
	_, err := p.Process(context.Background(), old, []Record{record(0, ev("a", 1, "1"))})
	if !errors.Is(err, ErrFenced) || len(s.batches) != 0 || len(l.claims) != 0 {
		t.Fatalf("zombie: err=%v writes=%d claims=%d", err, len(s.batches), len(l.claims))
	}
}

func TestProcessWaitsForRecordedRange(t *testing.T) {
	p, l, _ := newTestProcessor()
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
	l.intents[logPartition{topic: "t"}] = map[int64]Intent{0: {Source: Source{Topic: "t", First: 0, Last: 5}, HierarchyVersion: 7, Replay: true}}
	n, err := p.Process(context.Background(), epoch, []Record{record(0, ev("a", 1, "1"))})
	if err != nil || n != 0 {
		t.Fatalf("short of the recorded range: n=%d err=%v, want 0, nil", n, err)
	}
}

func TestSuspendedPolicy(t *testing.T) {
	r := &mapResolver{parent: map[int64]int64{1: 0, 2: 1, 3: 2}}
	sus := suspendedResolver{r, map[int64]bool{2: true}}
	e := &Event{EntityID: 3}
	// Through Ancestors, and through AncestorsLatest.
	for _, res := range []Resolver{sus, latestResolver{sus}} {
		chain, _, _ := expand(res, e, 0, SuspendedSkip, nil)
		if len(chain) != 2 || chain[0].ID != 3 || chain[1].ID != 1 || chain[1].Depth != 2 {
			t.Fatalf("%T: skip policy chain = %+v", res, chain)
		}
		chain, _, _ = expand(res, e, 0, SuspendedInclude, nil)
		if len(chain) != 3 {
			t.Fatalf("%T: include policy chain = %+v", res, chain)
		}
	}
}

// latestResolver answers AncestorsLatest, every chain as-is.
type latestResolver struct{ Resolver }

func (l latestResolver) AncestorsLatest(id int64, at time.Time, asOf int64, dst []Ancestor) ([]Ancestor, bool, bool) {
	chain, ok := l.Ancestors(id, at, asOf, dst)
	return chain, ok, ok
}

type suspendedResolver struct {
	*mapResolver
	suspended map[int64]bool
}

func (s suspendedResolver) Ancestors(id int64, at time.Time, asOf int64, dst []Ancestor) ([]Ancestor, bool) {
	chain, ok := s.mapResolver.Ancestors(id, at, asOf, dst)
	for i := range chain {
		chain[i].Suspended = s.suspended[chain[i].ID]
	}
	return chain, ok
}

// refreshingResolver learns entity 4 only when asked to catch up.
type refreshingResolver struct {
	*mapResolver
	refreshes int
}

func (r *refreshingResolver) Refresh(context.Context) (int64, error) {
	r.refreshes++
	r.parent[4] = 3
	r.version++
	return r.version, nil
}

// An event for an entity created a moment ago must not be dead-lettered
// because the follower has not polled yet: the batch catches up first and
// records the newer version in its intent.
func TestProcessRefreshesBeforeUnknownEntity(t *testing.T) {
	p, l, s := newTestProcessor()
	r := &refreshingResolver{mapResolver: p.Resolver.(*mapResolver)}
	p.Resolver = r
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
	n, err := p.Process(context.Background(), epoch, []Record{record(0, ev("a", 4, "1")), record(1, ev("b", 77, "1"))})
	if err != nil || n != 2 {
		t.Fatalf("Process = %d, %v", n, err)
	}
	b := s.batches[0]
	if b.Counts.Accepted != 1 || b.Counts.DeadLettered != 1 || r.refreshes != 1 || b.Intent.HierarchyVersion != 8 {
		t.Fatalf("counts %+v, refreshes %d, version %d; want 1 accepted, 1 dead letter (77), one refresh, version 8",
			b.Counts, r.refreshes, b.Intent.HierarchyVersion)
	}
}

// A batch over a wider range than an earlier one (a backfill from an earlier
// offset, offsets moved back by hand) stops before the recorded batch, skips
// it, and goes on after it: each record is written once.
func TestProcessStopsBeforeRecordedBatch(t *testing.T) {
	p, l, s := newTestProcessor()
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
	var recs []Record
	for i := range 9 {
		recs = append(recs, record(int64(i), ev(fmt.Sprintf("e%d", i), 3, "1")))
	}
	if n, err := p.Process(context.Background(), epoch, recs[3:6]); err != nil || n != 3 {
		t.Fatalf("middle batch: n=%d err=%v", n, err)
	}
	var steps []int
	for done := 0; done < len(recs); {
		n, err := p.Process(context.Background(), epoch, recs[done:])
		if err != nil || n == 0 {
			t.Fatalf("at %d: n=%d err=%v", done, n, err)
		}
		steps = append(steps, n)
		done += n
	}
	if !reflect.DeepEqual(steps, []int{3, 3, 3}) {
		t.Fatalf("batches of %v records, want 3, 3 (the recorded one, skipped), 3", steps)
	}
	var accepted uint32
	for _, b := range s.batches {
		accepted += b.Counts.Accepted
	}
	if accepted != 9 || len(s.batches) != 3 {
		t.Fatalf("%d batches accepted %d events, want 3 batches, 9 events", len(s.batches), accepted)
	}
}

// While canopy rebuild pauses new batches, Process waits and tries again
// instead of failing; a cancelled wait returns the context's error.
func TestProcessWaitsOutPause(t *testing.T) {
	p, l, s := newTestProcessor()
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
	l.paused = 2
	n, err := p.Process(context.Background(), epoch, []Record{record(0, ev("a", 3, "1"))})
	if err != nil || n != 1 || len(s.batches) != 1 || l.paused != 0 {
		t.Fatalf("after a pause: n=%d err=%v writes=%d refusals left=%d", n, err, len(s.batches), l.paused)
	}
	l.paused = 1 << 30
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	if _, err := p.Process(ctx, epoch, []Record{record(1, ev("b", 3, "1"))}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled during a pause: %v", err)
	}
}

// The same range read again after its batch was done and its intent purged
// (a backfill rerun, offsets reset) is a new batch that owns nothing; when
// its first write fails, its replay must own nothing either: the claims in
// its range belong to the earlier, purged batch, which counted them.
func TestReplayAfterPurgeOwnsNothing(t *testing.T) {
	p, l, s := newTestProcessor()
	ctx := context.Background()
	epoch, _ := l.Acquire(ctx, Source{Topic: "t"}, "me")
	recs := []Record{record(0, ev("a", 3, "1")), record(1, ev("b", 2, "2"))}
	if n, err := p.Process(ctx, epoch, recs); err != nil || n != 2 || s.batches[0].Counts.Accepted != 2 {
		t.Fatalf("first pass: n=%d err=%v", n, err)
	}
	delete(l.intents[lpOf(s.batches[0].Intent.Source)], 0) // the purge, a day after Done
	p.Now = func() time.Time { return time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC) }
	failFirstWrite(t, p, s, epoch, recs)
	if n, err := p.Process(ctx, epoch, recs); err != nil || n != 2 {
		t.Fatalf("replay: n=%d err=%v", n, err)
	}
	if c := s.batches[len(s.batches)-1].Counts; c.Accepted != 0 || c.Duplicates != 2 {
		t.Fatalf("replay of a re-read range counts %+v, want every record a duplicate", c)
	}
}

// An unfinished batch begun under one suspended-ancestors policy (or other
// measures) is refused a replay under another, which would write blocks
// that ClickHouse cannot recognise as repeats; with its own configuration
// back, it finishes.
func TestReplayUnderOtherConfigurationRefused(t *testing.T) {
	p, l, s := newTestProcessor()
	ctx := context.Background()
	epoch, _ := l.Acquire(ctx, Source{Topic: "t"}, "me")
	recs := []Record{record(0, ev("a", 3, "1")), record(1, ev("b", 2, "2"))}
	failFirstWrite(t, p, s, epoch, recs)
	p.Suspended = SuspendedSkip
	if _, err := p.Process(ctx, epoch, recs); !errors.Is(err, ErrReplayMismatch) || Retryable(err) {
		t.Fatalf("replay under another policy = %v, want a final ErrReplayMismatch", err)
	}
	other := *p
	other.Suspended = SuspendedInclude
	other.Decoder = NewDecoder(schema.Measures{{Name: "amount", Kind: schema.KindDecimal, Scale: 2}}, 0)
	if _, err := other.Process(ctx, epoch, recs); !errors.Is(err, ErrReplayMismatch) {
		t.Fatalf("replay under other measures = %v, want ErrReplayMismatch", err)
	}
	if len(s.batches) != 0 {
		t.Fatalf("a refused replay wrote %d batches", len(s.batches))
	}
	p.Suspended = SuspendedInclude
	if n, err := p.Process(ctx, epoch, recs); err != nil || n != 2 || s.batches[0].Counts.Accepted != 2 {
		t.Fatalf("replay with its own configuration: n=%d err=%v", n, err)
	}
}

// capturedDLQ keeps what is dead-lettered.
type capturedDLQ struct{ fs []Failure }

func (d *capturedDLQ) Publish(_ context.Context, fs []Failure) error {
	d.fs = append(d.fs, fs...)
	return nil
}

// A record the router copied carries only source headers (and its
// producer's own); the decoder reads that source only when the record
// fails, and the failure must still name it, not the by-id copy.
func TestFailureNamesTheRoutedSource(t *testing.T) {
	p, l, _ := newTestProcessor()
	dlq := &capturedDLQ{}
	p.DLQ = dlq
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "byid", Partition: 2}, "me")
	routed := func(off int64, value string, extra ...kgo.RecordHeader) Record {
		hs := append([]kgo.RecordHeader{{Key: "trace", Value: []byte("x")}},
			SourceHeaders(Source{Topic: "events", Partition: 5, First: 70 + off})...)
		return Record{Topic: "byid", Partition: 2, Offset: off, Value: []byte(value), Headers: append(hs, extra...)}
	}
	recs := []Record{
		routed(1, `{not json`),
		routed(2, ev("c", 99, "1")), // unknown entity
		routed(3, `{not json`, kgo.RecordHeader{Key: HeaderAttempts, Value: []byte("2")}),
		{Topic: "byid", Partition: 2, Offset: 4, Value: []byte(`{not json`)}, // names no source
	}
	if n, err := p.Process(context.Background(), epoch, recs); err != nil || n != len(recs) {
		t.Fatalf("Process = %d, %v", n, err)
	}
	want := []struct {
		src      Source
		attempts uint32
	}{
		{Source{Topic: "events", Partition: 5, First: 71, Last: 71}, 1},
		{Source{Topic: "events", Partition: 5, First: 72, Last: 72}, 1},
		{Source{Topic: "events", Partition: 5, First: 73, Last: 73}, 3},
		{Source{Topic: "byid", Partition: 2, First: 4, Last: 4}, 1},
	}
	if len(dlq.fs) != len(want) {
		t.Fatalf("%d dead letters, want %d: %+v", len(dlq.fs), len(want), dlq.fs)
	}
	for i, f := range dlq.fs {
		f.Source.TopicID = ""
		if f.Source != want[i].src || f.Attempts != want[i].attempts {
			t.Errorf("dead letter %d: source %+v, attempts %d; want %+v, %d", i, f.Source, f.Attempts, want[i].src, want[i].attempts)
		}
	}
}

// warmingResolver is a mapResolver that records what it is asked to warm.
type warmingResolver struct {
	*mapResolver
	warmed    [][]int64
	holding   bool // between Warm and its done
	reentered bool // reached while holding
}

// Warm answers through the mapResolver and fails the test if the
// processor reaches w itself before done.
func (w *warmingResolver) Warm(ids []int64) (Resolver, func()) {
	w.warmed = append(w.warmed, slices.Clone(ids))
	w.holding = true
	return w.mapResolver, func() { w.holding = false }
}

func (w *warmingResolver) Ancestors(id int64, at time.Time, asOf int64, dst []Ancestor) ([]Ancestor, bool) {
	if w.holding {
		w.reentered = true
	}
	return w.mapResolver.Ancestors(id, at, asOf, dst)
}

// TestProcessResolvesInChunksInRecordOrder: decode reads records a chunk
// at a time and resolves the chunk after warming its entities. Over three
// chunks of records that are valid, malformed, of an unknown entity or a
// repeated id, the outcome is each record's own, in record order, whether
// or not the resolver warms; and Warm saw every decoded record's entity.
func TestProcessResolvesInChunksInRecordOrder(t *testing.T) {
	const n = 2*warmChunk + 100
	var (
		recs                        []Record
		wantAccepted, wantFailed    []int64
		wantEntities                []int64
		wantDuplicates, lastValidID = 0, ""
	)
	for i := range n {
		off := int64(i)
		switch {
		case i%7 == 3:
			recs = append(recs, record(off, `{"event_id":`))
			wantFailed = append(wantFailed, off)
		case i%11 == 5:
			recs = append(recs, record(off, ev(fmt.Sprintf("e%d", i), 99, "1")))
			wantFailed = append(wantFailed, off)
			wantEntities = append(wantEntities, 99)
		case i%13 == 0 && lastValidID != "":
			recs = append(recs, record(off, ev(lastValidID, 2, "1")))
			wantDuplicates++
			wantEntities = append(wantEntities, 2)
		default:
			lastValidID = fmt.Sprintf("e%d", i)
			recs = append(recs, record(off, ev(lastValidID, 1+i%3, "1")))
			wantAccepted = append(wantAccepted, off)
			wantEntities = append(wantEntities, int64(1+i%3))
		}
	}
	for _, warms := range []bool{false, true} {
		p, l, s := newTestProcessor()
		w := &warmingResolver{mapResolver: p.Resolver.(*mapResolver)}
		if warms {
			p.Resolver = w
		}
		epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
		if got, err := p.Process(context.Background(), epoch, recs); err != nil || got != n {
			t.Fatalf("warms=%v: Process = %d, %v; want %d, nil", warms, got, err, n)
		}
		if len(s.batches) != 1 {
			t.Fatalf("warms=%v: %d batches, want 1", warms, len(s.batches))
		}
		var accepted, failed []int64
		for _, e := range s.batches[0].Events {
			accepted = append(accepted, e.Offset)
		}
		for _, f := range s.failures {
			failed = append(failed, f.Source.First)
		}
		if !slices.Equal(accepted, wantAccepted) {
			t.Errorf("warms=%v: accepted offsets %v, want %v", warms, accepted, wantAccepted)
		}
		if !slices.Equal(failed, wantFailed) {
			t.Errorf("warms=%v: failed offsets %v, want %v (in record order)", warms, failed, wantFailed)
		}
		if c := s.batches[0].Counts; int(c.Duplicates) != wantDuplicates {
			t.Errorf("warms=%v: %d duplicates, want %d", warms, c.Duplicates, wantDuplicates)
		}
		if !warms {
			continue
		}
		var warmed []int64
		for _, ids := range w.warmed {
			if len(ids) > warmChunk {
				t.Errorf("Warm got %d ids at once, more than a chunk (%d)", len(ids), warmChunk)
			}
			warmed = append(warmed, ids...)
		}
		if !slices.Equal(warmed, wantEntities) {
			t.Errorf("Warm saw entities %v, want every decoded record's %v", warmed, wantEntities)
		}
		if w.reentered || w.holding {
			t.Errorf("between Warm and done the processor called the resolver (%v), or never called done (%v)", w.reentered, w.holding)
		}
	}
}
