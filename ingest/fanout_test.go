package ingest

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// fanoutBoth builds the batch both ways: the sort-based fan-out and
// AddFanout into map-based rollups followed by Sort. It fails unless the
// rows, their order, counts and sums are equal, and returns the hourly
// builder's key layout and whether it packed.
func fanoutBoth(t *testing.T, evs []Event, chains [][]Ancestor) (keyLayout, bool) {
	t.Helper()
	hourly, daily := NewRollup(2), NewRollup(2)
	fh, fd := newFanoutBuilder(2, false, 0), newFanoutBuilder(2, true, 0)
	for i := range evs {
		AddFanout(hourly, daily, &evs[i], chains[i], 1)
		fh.add(&evs[i], chains[i])
		fd.add(&evs[i], chains[i])
	}
	hourly.Sort()
	daily.Sort()
	l, packed := fh.layout()
	for _, c := range []struct {
		name      string
		want, got *Rollup
	}{{"hourly", hourly, fh.rollup()}, {"daily", daily, fd.rollup()}} {
		if c.got.Len() != c.want.Len() {
			t.Fatalf("%s: %d rows, want %d", c.name, c.got.Len(), c.want.Len())
		}
		for i := range c.want.Keys {
			if c.got.Keys[i] != c.want.Keys[i] || c.got.Events[i] != c.want.Events[i] ||
				c.got.Sums[0][i] != c.want.Sums[0][i] || c.got.Sums[1][i] != c.want.Sums[1][i] {
				t.Fatalf("%s row %d: got %+v %d %v %v, want %+v %d %v %v", c.name, i,
					c.got.Keys[i], c.got.Events[i], c.got.Sums[0][i], c.got.Sums[1][i],
					c.want.Keys[i], c.want.Events[i], c.want.Sums[0][i], c.want.Sums[1][i])
			}
		}
	}
	return l, packed
}

// Keys whose fields span (nearly) their whole range: the packed key takes
// exactly 64 bits, or one more and the builder falls back to the comparison
// sort. Both must give the map-based rollup's rows.
func TestFanoutBuilderPackingLimits(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	at := func(unix int64) time.Time { return time.Unix(unix, 0) }
	event := func(typ string, unix int64, ids []int64, depths []uint8) (Event, []Ancestor) {
		chain := make([]Ancestor, len(ids))
		for i := range ids {
			chain[i] = Ancestor{ID: ids[i], Depth: depths[i]}
		}
		return Event{Type: typ, OccurredAt: at(unix), Measures: []int64{rng.Int64N(1e9) - 5e8, math.MaxInt64}}, chain
	}
	tests := []struct {
		name   string
		batch  func() ([]Event, [][]Ancestor)
		bits   int // of the hourly key
		packed bool
	}{
		{
			// One type, one bucket, depth 0: the entity alone takes 64 bits.
			name: "entity range of 64 bits",
			batch: func() ([]Event, [][]Ancestor) {
				var evs []Event
				var chains [][]Ancestor
				for _, ids := range [][]int64{{math.MinInt64, math.MaxInt64}, {-1, 0, 1}, {math.MaxInt64, math.MinInt64 + 1}, {0}} {
					ev, ch := event("sale", 1_790_000_000, ids, make([]uint8, len(ids)))
					evs, chains = append(evs, ev), append(chains, ch)
				}
				return evs, chains
			},
			bits: 64, packed: true,
		},
		{
			name: "entity range of 64 bits and a second type",
			batch: func() ([]Event, [][]Ancestor) {
				var evs []Event
				var chains [][]Ancestor
				for i, ids := range [][]int64{{math.MinInt64, math.MaxInt64}, {-1, 0, 1}, {math.MaxInt64, 7}, {0}} {
					ev, ch := event([]string{"sale", "refund"}[i%2], 1_790_000_000, ids, make([]uint8, len(ids)))
					evs, chains = append(evs, ev), append(chains, ch)
				}
				return evs, chains
			},
			bits: 65, packed: false,
		},
		{
			// 256 types (8 bits), depths 0…255 (8 bits), entities over 2^32
			// (32 bits) and hours over 2^16 (16 bits): 64 bits, every field
			// at its largest value somewhere.
			name: "every field at its limit",
			batch: func() ([]Event, [][]Ancestor) {
				var evs []Event
				var chains [][]Ancestor
				base := int64(-1 << 40)
				for i := range 600 {
					hour := int64(i%3) * ((1<<16 - 1) / 2)
					ids := []int64{base + int64(i%5)*((1<<32-1)/4), base + rng.Int64N(1<<32), base}
					depths := []uint8{uint8(i), 255, uint8(rng.IntN(256))}
					ev, ch := event(string(rune('A'+i%256)), -3_600_000+hour*3600+rng.Int64N(3600), ids, depths)
					evs, chains = append(evs, ev), append(chains, ch)
				}
				return evs, chains
			},
			bits: 64, packed: true,
		},
		{
			name: "times over the whole int64 range",
			batch: func() ([]Event, [][]Ancestor) {
				var evs []Event
				var chains [][]Ancestor
				for _, unix := range []int64{math.MinInt64 / 2, -1, 0, 3599, 3600, math.MaxInt64 / 2, -3601} {
					ev, ch := event("sale", unix, []int64{1, 2}, []uint8{0, 1})
					evs, chains = append(evs, ev), append(chains, ch)
				}
				for range 50 {
					ev, ch := event("refund", rng.Int64N(math.MaxInt64/2)-math.MaxInt64/4, []int64{1 + rng.Int64N(3), math.MaxInt64 - rng.Int64N(3)}, []uint8{0, 9})
					evs, chains = append(evs, ev), append(chains, ch)
				}
				return evs, chains
			},
			bits: 63 + 52 + 4 + 1, packed: false,
		},
		{
			name: "no links",
			batch: func() ([]Event, [][]Ancestor) {
				ev, _ := event("sale", 0, nil, nil)
				return []Event{ev}, [][]Ancestor{nil}
			},
			bits: 0, packed: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs, chains := tt.batch()
			l, packed := fanoutBoth(t, evs, chains)
			if packed != tt.packed || l.bits != tt.bits {
				t.Errorf("hourly key of %d bits, packed %v; want %d, %v", l.bits, packed, tt.bits, tt.packed)
			}
		})
	}
}

// The comparison sort that keys too wide to pack fall back to gives the
// same rows as the radix sort: force it on an ordinary batch.
func TestFanoutBuilderFallbackEqualsPacked(t *testing.T) {
	evs, chains := randomBatch(rand.New(rand.NewPCG(5, 6)), 3000, []string{"zeta", "alpha", "refund", "Sale", "sale"})
	for _, day := range []bool{false, true} {
		f, g := newFanoutBuilder(2, day, 0), newFanoutBuilder(2, day, 0)
		for i := range evs {
			f.add(&evs[i], chains[i])
			g.add(&evs[i], chains[i])
		}
		if _, ok := g.layout(); !ok {
			t.Fatal("an ordinary batch does not pack")
		}
		packed := g.rollup()
		rank := make([]uint16, len(f.names))
		names := slices.Clone(f.names)
		slices.Sort(names)
		for i, n := range f.names {
			rank[i] = uint16(slices.Index(names, n)) //nolint:gosec // few types
		}
		compared := f.rollupCompared(rank, names)
		if !slices.Equal(packed.Keys, compared.Keys) || !slices.Equal(packed.Events, compared.Events) ||
			!slices.Equal(packed.Sums[0], compared.Sums[0]) || !slices.Equal(packed.Sums[1], compared.Sums[1]) {
			t.Fatalf("day %v: the comparison sort's %d rows differ from the radix sort's %d", day, compared.Len(), packed.Len())
		}
	}
}

// radixSort orders by the low bits of the key, stably, whichever passes it
// skips.
func TestRadixSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for _, c := range []struct {
		name string
		n    int
		bits int
		key  func() uint64
	}{
		{"empty", 0, 64, rng.Uint64},
		{"one", 1, 64, rng.Uint64},
		{"64 bits", 5000, 64, rng.Uint64},
		{"few distinct", 5000, 64, func() uint64 { return rng.Uint64N(4) << 62 }},
		{"middle bytes only", 5000, 40, func() uint64 { return rng.Uint64N(1<<16) << 16 }},
		{"all equal", 100, 24, func() uint64 { return 7 }},
		{"17 bits", 5000, 17, func() uint64 { return rng.Uint64N(1 << 17) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := make([]fanoutLink, c.n)
			for i := range a {
				a[i] = fanoutLink{key: c.key(), event: int32(i)} //nolint:gosec // small
			}
			want := slices.Clone(a)
			slices.SortStableFunc(want, func(x, y fanoutLink) int {
				if x.key < y.key {
					return -1
				}
				if x.key > y.key {
					return 1
				}
				return 0
			})
			if got := radixSort(a, make([]fanoutLink, len(a)), c.bits); !slices.Equal(got, want) {
				t.Fatal("not sorted stably")
			}
		})
	}
}
