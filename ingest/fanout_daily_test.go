package ingest

import (
	"math/rand/v2"
	"testing"
	"time"
)

// dailyOf of the hourly fan-out equals the daily rollup built link by link
// (AddFanout into a map-based rollup, then Sort): same rows in the same
// order with the same counts and sums, for batches of many entities, for
// ancestors that receive every depth and type within one day, across day
// and month ends, before 1970 (where Go's % truncates towards zero) and
// with depths missing (suspended ancestors skipped).
func TestDailyOfHourlyEqualsDailyFanout(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	types := []string{"zeta", "alpha", "refund", "Sale", "sale"}
	type batch struct {
		evs    []Event
		chains [][]Ancestor
	}
	var batches []batch
	for _, n := range []int{0, 1, 2, 50, 5000} {
		evs, chains := randomBatch(rng, n, types)
		batches = append(batches, batch{evs, chains})
	}
	// Few entities, times around midnights and 1970, chains with gaps.
	var b batch
	for range 3000 {
		unix := []int64{-86400 - 1, -3601, -1, 0, 3599, 86399, 86400, 1_790_000_000, 1_790_035_199, 1_790_035_200}[rng.IntN(10)] + rng.Int64N(7200) - 3600
		chain := []Ancestor{{ID: 1 + rng.Int64N(5), Depth: 0}}
		for d := uint8(1); d < 6; d++ {
			if rng.IntN(3) > 0 {
				chain = append(chain, Ancestor{ID: 100 + int64(d), Depth: d})
			}
		}
		b.evs = append(b.evs, Event{Type: types[rng.IntN(len(types))], OccurredAt: time.Unix(unix, 0),
			Measures: []int64{rng.Int64N(2e6) - 1e6, rng.Int64N(10)}})
		b.chains = append(b.chains, chain)
	}
	batches = append(batches, b)
	// Two ancestors met at every depth and type in every hour of two days:
	// runs of hundreds of rows (an hour's depths and types, hour after
	// hour), the long runs' sort.
	var long batch
	for range 4000 {
		unix := 1_790_035_200 + rng.Int64N(2*86400)
		chain := []Ancestor{{ID: 1000 + rng.Int64N(3000), Depth: 0}, {ID: 1 + rng.Int64N(2), Depth: uint8(1 + rng.IntN(12))}}
		long.evs = append(long.evs, Event{Type: types[rng.IntN(len(types))], OccurredAt: time.Unix(unix, 0),
			Measures: []int64{rng.Int64N(2e6) - 1e6, rng.Int64N(10)}})
		long.chains = append(long.chains, chain)
	}
	batches = append(batches, long)
	// Ids and times too spread to pack into 64 bits: the comparison sort.
	var wide batch
	for i := range 2000 {
		unix := []int64{0, 1_790_000_000, 4_000_000_000}[i%3] + rng.Int64N(3*86400)
		chain := []Ancestor{{ID: 1 + rng.Int64N(3), Depth: 0}, {ID: 1 << 62, Depth: uint8(1 + rng.IntN(3))}}
		wide.evs = append(wide.evs, Event{Type: types[rng.IntN(len(types))], OccurredAt: time.Unix(unix, 0),
			Measures: []int64{rng.Int64N(2e6) - 1e6, rng.Int64N(10)}})
		wide.chains = append(wide.chains, chain)
	}
	batches = append(batches, wide)

	for bi, b := range batches {
		want := NewRollup(2)
		fh := newFanoutBuilder(2, false, 0)
		for i := range b.evs {
			addDaily(want, &b.evs[i], b.chains[i], 1)
			fh.add(&b.evs[i], b.chains[i])
		}
		want.Sort()
		if _, packed := fh.layout(); !packed != (bi == len(batches)-1) {
			t.Fatalf("batch %d: packed %v", bi, packed)
		}
		_, got := fh.rollups()
		if got.Len() != want.Len() {
			t.Fatalf("batch %d: %d rows, want %d", bi, got.Len(), want.Len())
		}
		for i := range want.Keys {
			if got.Keys[i] != want.Keys[i] || got.Events[i] != want.Events[i] ||
				got.Sums[0][i] != want.Sums[0][i] || got.Sums[1][i] != want.Sums[1][i] {
				t.Fatalf("batch %d row %d: got %+v %d %v %v, want %+v %d %v %v", bi, i,
					got.Keys[i], got.Events[i], got.Sums[0][i], got.Sums[1][i],
					want.Keys[i], want.Events[i], want.Sums[0][i], want.Sums[1][i])
			}
		}
	}
}
