package ingest

import (
	"math/rand/v2"
	"testing"
	"time"
)

// Rollup against a plain map: same rows and sums, and Sort orders rows by
// key while keeping every row's sums with it.
// Grow, before or in the middle of a batch, changes nothing but capacity.
func TestRollupMatchesNaiveSums(t *testing.T) {
	for _, grow := range []int{0, 100, 100_000} {
		testRollupMatchesNaiveSums(t, grow)
	}
}

func testRollupMatchesNaiveSums(t *testing.T, grow int) {
	rng := rand.New(rand.NewPCG(1, 2))
	r := NewRollup(2)
	r.Grow(grow)
	type sums struct{ events, a, b int64 }
	want := map[RollupKey]sums{}
	types := []string{"sale", "refund", "x"}
	for i := 0; i < 5000; i++ {
		k := RollupKey{EntityID: 1 + rng.Int64N(50), Bucket: 3600 * rng.Int64N(5), Depth: uint8(rng.IntN(4)), Type: types[rng.IntN(3)]}
		a, b := rng.Int64N(1000)-500, rng.Int64N(10)
		r.Add(k, []int64{a, b})
		if i == 2500 {
			r.Grow(grow)
		}
		s := want[k]
		want[k] = sums{s.events + 1, s.a + a, s.b + b}
	}
	r.Sort()
	if r.Len() != len(want) {
		t.Fatalf("%d rows, want %d", r.Len(), len(want))
	}
	for i, k := range r.Keys {
		if i > 0 && r.Keys[i-1].compare(&k) >= 0 {
			t.Fatalf("rows %d and %d out of order: %+v, %+v", i-1, i, r.Keys[i-1], k)
		}
		w := want[k]
		if int64(r.Events[i]) != w.events || r.Sums[0][i].Big().Int64() != w.a || r.Sums[1][i].Big().Int64() != w.b {
			t.Fatalf("row %+v = %d %s %s, want %+v", k, r.Events[i], r.Sums[0][i].Big(), r.Sums[1][i].Big(), w)
		}
	}
}

// Merge sums rows across rollups and drops rows that cancel, as a move out
// and back in does.
func TestMergeCancelsAndSums(t *testing.T) {
	a, b := NewRollup(1), NewRollup(1)
	k1 := RollupKey{EntityID: 1, Bucket: 86400, Depth: 1, Type: "sale"}
	k2 := RollupKey{EntityID: 2, Bucket: 86400, Depth: 2, Type: "sale"}
	a.Add(k1, []int64{500})
	a.Add(k2, []int64{-70})
	b.Sub(k1, []int64{500})
	b.Add(k2, []int64{-30})
	b.Add(k2, []int64{1})
	m := Merge(a, b)
	if m.Len() != 1 || m.Keys[0] != k2 {
		t.Fatalf("merged keys = %v, want only %v", m.Keys, k2)
	}
	if v, _ := m.Sums[0][0].Int64(); m.Events[0] != 3 || v != -99 {
		t.Fatalf("merged row = %d events, sum %d; want 3, -99", m.Events[0], v)
	}
}

// BenchmarkRollupBatch is the in-memory aggregation of one worker batch at
// the benchmark's scale: 50,000 events over 1,000,000 entities, chains of 7,
// into hourly and daily rollups, then sorted for the INSERT.
func BenchmarkRollupBatch(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	type fan struct {
		ev    Event
		chain []Ancestor
	}
	batch := make([]fan, 50_000)
	types := []string{"sale", "refund", "subscription"}
	for i := range batch {
		id := 1 + rng.Int64N(1_000_000)
		f := fan{ev: Event{EntityID: id, Type: types[rng.IntN(3)], Measures: []int64{rng.Int64N(1e6), 1 + rng.Int64N(9)},
			OccurredAt: time.Unix(1_790_000_000+rng.Int64N(30*86400), 0)}}
		for d := 0; d < 7; d++ {
			f.chain = append(f.chain, Ancestor{ID: id, Depth: uint8(d)})
			id = 1 + id/8
		}
		batch[i] = f
	}
	b.ReportAllocs()
	for b.Loop() {
		hourly, daily := NewRollup(2), NewRollup(2)
		hourly.Grow(7 * len(batch))
		daily.Grow(7 * len(batch))
		for i := range batch {
			addFanout(hourly, daily, &batch[i].ev, batch[i].chain)
		}
		hourly.Sort()
		daily.Sort()
	}
}
