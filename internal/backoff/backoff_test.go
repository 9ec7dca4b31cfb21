package backoff

import (
	"context"
	"testing"
	"time"
)

func TestWaitsDoubleWithinJitterUpToTheCap(t *testing.T) {
	b := New(100*time.Millisecond, time.Second)
	want := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for round := range 2 {
		for i, w := range want {
			w *= time.Millisecond
			lo, hi := time.Duration(float64(w)*(1-Jitter)), time.Duration(float64(w)*(1+Jitter))
			if got := b.Next(); got < lo || got > hi {
				t.Fatalf("round %d, wait %d: %v, want within [%v, %v]", round, i, got, lo, hi)
			}
		}
		b.Reset()
	}
}

func TestWaitEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if New(time.Hour, time.Hour).Wait(ctx) {
		t.Fatal("Wait reported a full wait on an ended context")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Wait took %v on an ended context", d)
	}
	if !New(time.Millisecond, time.Millisecond).Wait(context.Background()) {
		t.Fatal("Wait reported an ended context")
	}
}
