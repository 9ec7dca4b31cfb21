package ingest

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/canopyhq/canopy/schema"
)

// The arrays of a batch's rollups are reused by the next batch once the
// Sink has copied them (rollupArrays, batchCopier). A rollup given back
// while something still reads it, or reused without being zeroed first,
// would corrupt counts silently; these tests run batches of different
// sizes back to back through one Processor and compare every row each
// Sink was given with sums computed here from the events alone.

// movingTree is a hierarchy in which entity i's parent is i/5, except that
// until movedAt the entities divisible by 11 had parent i/5+1: their
// events before movedAt have an as-was chain other than their as-is one.
type movingTree struct{ n int64 }

var movedAt = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

func (movingTree) Version() int64 { return 1 }

func (t movingTree) Ancestors(id int64, at time.Time, _ int64, dst []Ancestor) ([]Ancestor, bool) {
	if id < 1 || id > t.n {
		return dst, false
	}
	for d := uint8(0); id != 0; d++ {
		dst = append(dst, Ancestor{ID: id, Depth: d})
		parent := id / 5
		if id%11 == 0 && at.Before(movedAt) {
			parent = id/5 + 1
		}
		id = parent
	}
	return dst, true
}

// testEvent is an event as the test generates it, before JSON.
type testEvent struct {
	id       string
	entity   int64
	at       time.Time
	typ      string
	amount   int64 // in 10^-4 units
	quantity int64
}

func (e testEvent) json() string {
	sign, u := "", e.amount
	if u < 0 {
		sign, u = "-", -u
	}
	return fmt.Sprintf(`{"event_id":%q,"entity_id":%d,"occurred_at":%q,"type":%q,"amount":"%s%d.%04d","quantity":%d}`,
		e.id, e.entity, e.at.Format(time.RFC3339), e.typ, sign, u/10000, u%10000, e.quantity)
}

// testEvents returns n events with ids prefixed by prefix, over entities
// 1…entities, spread over three weeks around movedAt, with a few types and
// signed measures.
func testEvents(seed uint64, prefix string, n int, entities int64) []testEvent {
	rng := rand.New(rand.NewPCG(seed, 7))
	types := []string{"sale", "refund", "view", "a"}
	start := movedAt.Add(-10 * 24 * time.Hour)
	evs := make([]testEvent, n)
	for i := range evs {
		evs[i] = testEvent{
			id:       fmt.Sprintf("%s-%d", prefix, i),
			entity:   1 + rng.Int64N(entities),
			at:       start.Add(time.Duration(rng.Int64N(21*24*3600)) * time.Second),
			typ:      types[rng.IntN(len(types))],
			amount:   rng.Int64N(2_000_000) - 500_000,
			quantity: rng.Int64N(100) - 10,
		}
	}
	return evs
}

// rowKey and rowSum are a rollup row as the test sums it.
type rowKey struct {
	entity, bucket int64
	depth          uint8
	typ            string
}

type rowSum struct{ events, amount, quantity int64 }

// expectedRows is what each rollup table must receive for evs, summed
// here: the as-was chains into hourly, daily and weekly buckets, the as-is
// chains into daily buckets.
func expectedRows(tree movingTree, evs []testEvent) map[string]map[rowKey]rowSum {
	want := map[string]map[rowKey]rowSum{}
	add := func(table string, k rowKey, e testEvent) {
		if want[table] == nil {
			want[table] = map[rowKey]rowSum{}
		}
		s := want[table][k]
		s.events++
		s.amount += e.amount
		s.quantity += e.quantity
		want[table][k] = s
	}
	for _, e := range evs {
		unix := e.at.Unix()
		hour, day := unix-unix%3600, unix-unix%86400
		week := day - ((day/86400+3)%7)*86400 // 1970-01-01 was a Thursday
		wasChain, _ := tree.Ancestors(e.entity, e.at, 1, nil)
		for _, a := range wasChain {
			add(schema.TableRollupHourly, rowKey{a.ID, hour, a.Depth, e.typ}, e)
			add(schema.TableRollupDaily, rowKey{a.ID, day, a.Depth, e.typ}, e)
			add(schema.TableRollupWeekly, rowKey{a.ID, week, a.Depth, e.typ}, e)
		}
		isChain, _ := tree.Ancestors(e.entity, EndOfTime, 1, nil)
		for _, a := range isChain {
			add(schema.TableRollupAsIs, rowKey{a.ID, day, a.Depth, e.typ}, e)
		}
	}
	return want
}

// copySink keeps a copy of every rollup row it is given, by table, made
// while Write runs; it keeps no reference to the batch. Like the
// ClickHouseSink it lets the Processor reuse the batch's arrays.
type copySink struct {
	mu      sync.Mutex
	batches []map[string][]copiedRow
	events  [][]string // each batch's event ids, in order
}

type copiedRow struct {
	key rowKey
	sum rowSum
}

func (*copySink) copiesBatch() {}

func copyRows(r *Rollup) []copiedRow {
	out := make([]copiedRow, r.Len())
	for i := range out {
		k := r.Keys[i]
		amount, ok := r.Sums[0][i].Int64()
		if !ok {
			amount = math.MinInt64 // no test sum is that large: a mismatch
		}
		quantity, ok := r.Sums[1][i].Int64()
		if !ok {
			quantity = math.MinInt64
		}
		out[i] = copiedRow{rowKey{k.EntityID, k.Bucket, k.Depth, k.Type}, rowSum{r.Events[i], amount, quantity}}
	}
	return out
}

func (s *copySink) Write(_ context.Context, b *Batch) error {
	tables := map[string][]copiedRow{
		schema.TableRollupHourly: copyRows(b.Hourly),
		schema.TableRollupDaily:  copyRows(b.Daily),
		schema.TableRollupAsIs:   copyRows(b.AsIs),
	}
	for _, c := range b.Coarser {
		tables[c.Grain.Table] = copyRows(c.Rollup)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, tables)
	ids := make([]string, len(b.Events))
	for i, e := range b.Events {
		ids[i] = fmt.Sprintf("%s@%d:%v", e.ID, e.Offset, e.Measures)
	}
	s.events = append(s.events, ids)
	return nil
}

func (s *copySink) WriteFailures(context.Context, []Failure) error { return nil }

// checkRows compares the rows one batch wrote to table with want: the same
// keys in the order of Rollup.Sort, the same sums.
func checkRows(t *testing.T, batch int, table string, got []copiedRow, want map[rowKey]rowSum) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("batch %d, %s: %d rows, want %d", batch, table, len(got), len(want))
	}
	bad := 0
	for i, r := range got {
		if i > 0 {
			a := RollupKey{EntityID: got[i-1].key.entity, Bucket: got[i-1].key.bucket, Depth: got[i-1].key.depth, Type: got[i-1].key.typ}
			b := RollupKey{EntityID: r.key.entity, Bucket: r.key.bucket, Depth: r.key.depth, Type: r.key.typ}
			if a.compare(&b) >= 0 {
				t.Errorf("batch %d, %s: row %d %+v is not after row %+v", batch, table, i, r.key, got[i-1].key)
			}
		}
		if w, ok := want[r.key]; !ok || w != r.sum {
			if bad++; bad <= 5 {
				t.Errorf("batch %d, %s: row %+v has %+v, want %+v (present: %v)", batch, table, r.key, r.sum, w, ok)
			}
		}
	}
	if bad > 5 {
		t.Errorf("batch %d, %s: %d rows wrong in all", batch, table, bad)
	}
}

func poolTestProcessor(s Sink, tree movingTree) *Processor {
	return &Processor{
		Decoder:  NewDecoder(schema.DefaultMeasures(), 0),
		Resolver: tree,
		Ledger:   ownAllLedger{},
		Sink:     s,
		DLQ:      &memDLQ{},
		Grains:   []schema.Grain{schema.Hourly, schema.Daily, schema.Weekly},
		Now:      func() time.Time { return time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC) },
	}
}

// poolTestBatches are batches of several sizes, larger and smaller than
// the one before, so that a batch reuses arrays longer than it needs with
// another batch's rows in them.
var poolTestBatches = []int{3000, 500, 5000, 1, 2000}

// poisonReleases makes the rest of the test overwrite released arrays
// (poisonReleased).
func poisonReleases(t *testing.T) {
	poisonReleased.Store(true)
	t.Cleanup(func() { poisonReleased.Store(false) })
}

// processPoolTestBatches runs poolTestBatches through p, one after the
// other, with event ids prefixed by prefix, and returns each batch's
// expected rows by table (computed from the events alone) and its events
// as "id@offset:[amount quantity]".
func processPoolTestBatches(t *testing.T, p *Processor, tree movingTree, prefix string) ([]map[string]map[rowKey]rowSum, [][]string) {
	t.Helper()
	var wants []map[string]map[rowKey]rowSum
	var wantIDs [][]string
	offset := int64(0)
	for i, n := range poolTestBatches {
		evs := testEvents(uint64(i), fmt.Sprintf("%s%d", prefix, i), n, tree.n)
		recs := make([]Record, n)
		ids := make([]string, n)
		for j, e := range evs {
			recs[j] = Record{Topic: "events", Partition: 0, Offset: offset + int64(j), Value: []byte(e.json())}
			ids[j] = fmt.Sprintf("%s@%d:%v", e.id, offset+int64(j), []int64{e.amount, e.quantity})
		}
		wantIDs = append(wantIDs, ids)
		offset += int64(n)
		if got, err := p.Process(context.Background(), 1, recs); err != nil || got != n {
			t.Fatalf("batch %d: processed %d of %d: %v", i, got, n, err)
		}
		wants = append(wants, expectedRows(tree, evs))
	}
	return wants, wantIDs
}

func TestBatchesBackToBackAreExact(t *testing.T) {
	poisonReleases(t)
	tree := movingTree{n: 20_000}
	s := &copySink{}
	p := poolTestProcessor(s, tree)
	wants, wantIDs := processPoolTestBatches(t, p, tree, "b")
	if len(s.batches) != len(poolTestBatches) {
		t.Fatalf("%d batches written, want %d", len(s.batches), len(poolTestBatches))
	}
	for i, want := range wants {
		if got := s.events[i]; !slices.Equal(got, wantIDs[i]) {
			j := 0
			for j < min(len(got), len(wantIDs[i])) && got[j] == wantIDs[i][j] {
				j++
			}
			t.Errorf("batch %d: %d events, want %d; the first difference at %d", i, len(got), len(wantIDs[i]), j)
		}
		for _, table := range []string{schema.TableRollupHourly, schema.TableRollupDaily, schema.TableRollupWeekly, schema.TableRollupAsIs} {
			checkRows(t, i, table, s.batches[i][table], want[table])
		}
	}
}

// A Sink that may keep the batches it is given (memSink keeps them) gets
// rollups that no later batch reuses: each batch's rollups still hold its
// own sums after the batches after it.
func TestKeptBatchesAreNotReused(t *testing.T) {
	poisonReleases(t)
	tree := movingTree{n: 20_000}
	s := &memSink{}
	p := poolTestProcessor(s, tree)
	wants, _ := processPoolTestBatches(t, p, tree, "k")
	if len(s.batches) != len(poolTestBatches) {
		t.Fatalf("%d batches written, want %d", len(s.batches), len(poolTestBatches))
	}
	for i, b := range s.batches {
		checkRows(t, i, schema.TableRollupHourly, copyRows(b.Hourly), wants[i][schema.TableRollupHourly])
		checkRows(t, i, schema.TableRollupDaily, copyRows(b.Daily), wants[i][schema.TableRollupDaily])
		checkRows(t, i, schema.TableRollupWeekly, copyRows(b.Coarser[0].Rollup), wants[i][schema.TableRollupWeekly])
		checkRows(t, i, schema.TableRollupAsIs, copyRows(b.AsIs), wants[i][schema.TableRollupAsIs])
	}
}

// The blocks of the pinned batch (TestBlocksStayTheSame) are the same when
// its rollups are built in arrays another batch used before, through the
// ClickHouseSink that lets them be reused.
func TestBlocksStayTheSameAfterOtherBatches(t *testing.T) {
	if blockFormat != 2 {
		t.Skip("the digest is of block format 2")
	}
	const want = blocksDigestWant
	poisonReleases(t)
	// A larger batch of other events first leaves its rows in the arrays.
	const entities = 1_000_000
	other := benchRecords(t, 30_000, entities/3)
	for i := range other {
		other[i].Offset += 1_000_000
	}
	conn := newEncodingConn(schema.ClickHouse{Database: "canopy", Measures: schema.DefaultMeasures()})
	if got, err := benchProcessor(conn, entities).Process(context.Background(), 1, other); err != nil || got != len(other) {
		t.Fatalf("processed %d of %d: %v", got, len(other), err)
	}
	for i := range 2 {
		if got := blocksDigest(t, 20_000); got != want {
			t.Errorf("blocks of a fixed batch, run %d after another batch: digest %s, want %s", i+1, got, want)
		}
	}
}

func TestFreeListReusesAndBounds(t *testing.T) {
	l := freeList[int64]{maxBytes: 100 * 8}
	a := l.get(60)
	a[0] = 42
	l.put(a)
	if b := l.get(50); len(b) != 50 || &b[:1][0] != &a[0] {
		t.Errorf("get after put: a new array, want the one put back")
	}
	if b := l.get(10); &b[:1][0] == &a[0] {
		t.Errorf("an array was handed out twice")
	}
	l.put(make([]int64, 0, 60))
	l.put(make([]int64, 0, 30))
	l.put(make([]int64, 0, 50)) // 140 rows held: the smallest go
	if l.bytes > l.maxBytes || len(l.free) != 1 || cap(l.free[0]) != 60 {
		t.Errorf("after puts over the bound: %d bytes in %d arrays, want the one of 60 rows", l.bytes, len(l.free))
	}
	l.put(make([]int64, 0, 200)) // larger than the bound: not kept
	if len(l.free) != 1 {
		t.Errorf("an array larger than the bound was kept")
	}
	if got := l.get(0); got != nil {
		t.Errorf("get(0) = %v, want nil", got)
	}
}

// A released batch's accepted events leave its array zeroed, so the next
// batch that takes it (from the first row to the capacity) holds no string
// of an earlier batch; release clears only what its batch could write.
func TestAcceptedReleasedZero(t *testing.T) {
	large := new(rollupArrays)
	ev := large.acceptedEvents(5000)
	for i := range 5000 {
		ev = append(ev, Accepted{Event: Event{ID: fmt.Sprint("large-", i), Type: "sale"}, Offset: int64(i)})
	}
	large.release()
	for round := range 3 {
		small := new(rollupArrays)
		ev := small.acceptedEvents(10)
		whole := ev[:cap(ev)]
		for i := range whole {
			if a := whole[i]; a.ID != "" || a.Type != "" || a.Measures != nil || a.EntityID != 0 || a.Offset != 0 {
				t.Fatalf("round %d: row %d of a reused array holds %+v", round, i, whole[i])
			}
		}
		for i := range 10 {
			ev = append(ev, Accepted{Event: Event{ID: fmt.Sprint("small-", round, i)}, Offset: int64(i)})
		}
		small.release()
	}
}
