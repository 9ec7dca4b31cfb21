package idstate

import (
	"bytes"
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
		appendIDKey(nil, -2, 5, []byte("z")),
		appendIDKey(nil, 0, 0, []byte("\xff\xff")),
		appendIDKey(nil, 0, 1, []byte("a")),
		appendIDKey(nil, 1, 0, []byte("a")),
		appendIDKey(nil, 1<<31-1, 1<<32-1, []byte("\xff")),
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
