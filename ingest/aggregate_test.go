package ingest

import (
	"math/rand/v2"
	"testing"
	"time"
)

// Rollup against a plain map: same rows and sums, and Sort orders rows by
// key while keeping every row's sums with it.
func TestRollupMatchesNaiveSums(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	r := NewRollup(2)
	type sums struct{ events, a, b int64 }
	want := map[RollupKey]sums{}
	types := []string{"sale", "refund", "x"}
	for i := 0; i < 5000; i++ {
		k := RollupKey{EntityID: 1 + rng.Int64N(50), Bucket: 3600 * rng.Int64N(5), Depth: uint8(rng.IntN(4)), Type: types[rng.IntN(3)]}
		a, b := rng.Int64N(1000)-500, rng.Int64N(10)
		r.Add(k, []int64{a, b})
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

// randomBatch is n events over entities 1..1,000,000 with chains of 7 and
// the given types, over 30 days.
func randomBatch(rng *rand.Rand, n int, types []string) ([]Event, [][]Ancestor) {
	evs := make([]Event, n)
	chains := make([][]Ancestor, n)
	for i := range evs {
		id := 1 + rng.Int64N(1_000_000)
		evs[i] = Event{EntityID: id, Type: types[rng.IntN(len(types))], Measures: []int64{rng.Int64N(2e6) - 1e6, 1 + rng.Int64N(9)},
			OccurredAt: time.Unix(1_790_000_000+rng.Int64N(30*86400), 0)}
		for d := 0; d < 7; d++ {
			chains[i] = append(chains[i], Ancestor{ID: id, Depth: uint8(d)})
			id = 1 + id/8
		}
	}
	return evs, chains
}

// The batch path's sort-based fan-out equals AddFanout into map-based
// rollups followed by Sort: same rows, order, counts and sums, whatever the
// order in which types first appear.
func TestFanoutBuilderEqualsRollup(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{0, 1, 50, 5000} {
		evs, chains := randomBatch(rng, n, []string{"zeta", "alpha", "refund", "Sale", "sale"})
		fanoutBoth(t, evs, chains) // fails unless rows, order, counts and sums are equal
	}
}

// BenchmarkRollupBatch is the in-memory aggregation of one worker batch at
// the benchmark's scale: 50,000 events over 1,000,000 entities, chains of 7,
// into hourly and daily rollups, sorted for the INSERT — the batch path
// (sorted) against map-based rollups (what restatements use).
func BenchmarkRollupBatch(b *testing.B) {
	evs, chains := randomBatch(rand.New(rand.NewPCG(3, 4)), 50_000, []string{"sale", "refund", "subscription"})
	b.Run("sorted", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			fh, fd := newFanoutBuilder(2, false, 7*len(evs)), newFanoutBuilder(2, true, 7*len(evs))
			for i := range evs {
				fh.add(&evs[i], chains[i])
				fd.add(&evs[i], chains[i])
			}
			fh.rollup()
			fd.rollup()
		}
	})
	b.Run("map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			hourly, daily := NewRollup(2), NewRollup(2)
			for i := range evs {
				AddFanout(hourly, daily, &evs[i], chains[i], 1)
			}
			hourly.Sort()
			daily.Sort()
		}
	})
}
