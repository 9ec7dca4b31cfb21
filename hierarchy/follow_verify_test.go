package hierarchy

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// verifyWith makes the follower verify against s, timing the lookups. It
// is in a file of its own so that the catch-up benchmark also runs against
// the follower as it was before verification (with a no-op verifyWith).
func verifyWith(f *Follower, s *Store) { f.History = timedHistory{s} }

var lookups, lookupNanos atomic.Int64

type timedHistory struct{ h History }

func (t timedHistory) HistoryRows(ctx context.Context, seqs []int64) (map[int64]HistoryRow, int64, error) {
	start := time.Now()
	defer func() { lookups.Add(1); lookupNanos.Add(int64(time.Since(start))) }()
	return t.h.HistoryRows(ctx, seqs)
}

func resetLookups() { lookups.Store(0); lookupNanos.Store(0) }

// reportLookups reports the lookups per catch-up and their time.
func reportLookups(b *testing.B) {
	b.ReportMetric(float64(lookups.Load())/float64(b.N), "lookups/catch-up")
	b.ReportMetric(float64(lookupNanos.Load())/1e6/float64(b.N), "lookup-ms/catch-up")
}
