package ingest

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestOwnedMatchesAMap adds random offsets, inside the batch's range and
// outside it on both sides, and compares every answer with a map's.
func TestOwnedMatchesAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 13))
	for round := range 200 {
		first := rng.Int64N(1 << 40)
		src := Source{First: first, Last: first + rng.Int64N(300) - 1} // sometimes empty
		o := NewOwned(src)
		if round%10 == 0 {
			o = &Owned{} // the zero value
		}
		want := map[int64]bool{}
		for range rng.IntN(100) {
			off := first + rng.Int64N(400) - 50
			if off < 0 {
				continue
			}
			o.Add(off)
			want[off] = true
		}
		if o.Len() != len(want) {
			t.Fatalf("round %d: Len %d, want %d", round, o.Len(), len(want))
		}
		for off := first - 200; off < first+600; off++ {
			if o.Has(off) != want[off] {
				t.Fatalf("round %d (%+v): Has(%d) = %v, want %v", round, src, off, o.Has(off), want[off])
			}
		}
		var sorted []int64
		for off := range want {
			sorted = append(sorted, off)
		}
		slices.Sort(sorted)
		if got := o.Offsets(); !slices.Equal(got, sorted) {
			t.Fatalf("round %d: Offsets %v, want %v", round, got, sorted)
		}
	}
	var none *Owned
	if none.Has(0) || none.Len() != 0 || none.String() != "[]" {
		t.Fatalf("nil set: Has %v Len %d String %q", none.Has(0), none.Len(), none.String())
	}
	o := NewOwned(Source{First: 10, Last: 20})
	o.Add(12)
	o.Add(11)
	o.Add(12)
	if o.String() != "[11 12]" || o.Len() != 2 {
		t.Fatalf("String %q, Len %d", o.String(), o.Len())
	}
}
