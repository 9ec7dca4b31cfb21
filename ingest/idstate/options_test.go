package idstate

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestOptionsDefaults(t *testing.T) {
	cases := []struct {
		horizon, segment, want time.Duration
		err                    bool
	}{
		{horizon: 24 * time.Hour, want: 24 * time.Hour},
		{horizon: 48 * time.Hour, want: 24 * time.Hour},
		{horizon: 5 * time.Hour, want: 4 * time.Hour},
		{horizon: time.Hour, want: time.Hour},
		{horizon: 90 * time.Minute, want: time.Hour},
		{horizon: 10 * time.Second, want: time.Second},
		{horizon: time.Millisecond, want: time.Second},
		{horizon: time.Hour, segment: 7 * time.Minute, err: true},
		{horizon: time.Hour, segment: 500 * time.Millisecond, err: true},
		{horizon: time.Hour, segment: 48 * time.Hour, err: true},
		{horizon: 0, err: true},
	}
	for _, tc := range cases {
		o, err := Options{Horizon: tc.horizon, Segment: tc.segment}.withDefaults()
		if (err != nil) != tc.err {
			t.Errorf("horizon %v segment %v: err = %v", tc.horizon, tc.segment, err)
			continue
		}
		if err == nil && o.Segment != tc.want {
			t.Errorf("horizon %v: Segment = %v, want %v", tc.horizon, o.Segment, tc.want)
		}
	}
}

func TestKeyOrder(t *testing.T) {
	// Partitions and segments sort numerically, and a partition's span
	// holds its keys only.
	keys := [][]byte{
		appendIDKey(nil, -2, 5, idHash{^uint64(0), 0}),
		appendIDKey(nil, 0, 0, idHash{^uint64(0), ^uint64(0)}),
		appendIDKey(nil, 0, 1, idHash{0, 1}),
		appendIDKey(nil, 1, 0, idHash{0, 1}),
		appendIDKey(nil, 1<<31-1, 1<<32-1, idHash{^uint64(0), ^uint64(0)}),
	}
	for i := 1; i < len(keys); i++ {
		if bytes.Compare(keys[i-1], keys[i]) >= 0 {
			t.Fatalf("key %d not after key %d", i, i-1)
		}
	}
	start, end := partSpan(prefixID, 0)
	if bytes.Compare(keys[1], start) < 0 || bytes.Compare(keys[2], end) >= 0 || bytes.Compare(keys[3], end) < 0 {
		t.Fatal("partSpan(0) bounds")
	}
	s, e := idSpan(1<<31-1, 0, 1<<32)
	if bytes.Compare(keys[4], s) < 0 || bytes.Compare(keys[4], e) >= 0 {
		t.Fatal("idSpan of the last partition misses its last key")
	}
}

func TestSeekOrderIsKeyOrder(t *testing.T) {
	// fetch and write walk the lookups in seek order and rely on it being
	// the order of their keys.
	r := rand.New(rand.NewPCG(7, 8))
	ord := make([]seek, 2000)
	for i := range ord {
		h := idHash{r.Uint64(), r.Uint64()}
		if i%3 == 0 { // equal high halves: the low half decides
			h.hi = ord[r.IntN(i+1)].h.hi
		}
		ord[i].segID = segID{seg: uint32(r.IntN(3)), h: h}
	}
	slices.SortFunc(ord, func(a, b seek) int { return a.cmp(&b) })
	for i := 1; i < len(ord); i++ {
		a := appendIDKey(nil, 4, ord[i-1].seg, ord[i-1].h)
		b := appendIDKey(nil, 4, ord[i].seg, ord[i].h)
		if c := bytes.Compare(a, b); c > 0 || (c == 0) != (ord[i-1].segID == ord[i].segID) {
			t.Fatalf("seek %d (%x) sorts before %d (%x)", i-1, a, i, b)
		}
	}
}
