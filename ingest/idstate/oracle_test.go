package idstate

import (
	"math/rand/v2"
	"time"
)

// oracle applies the rule literally to a full list of accepted occurrences,
// never forgetting any. It is the reference the Store is compared with.
type oracle struct {
	horizon int64 // ms
	acc     map[string][]occ
}

func newOracle(h time.Duration) *oracle {
	return &oracle{horizon: h.Milliseconds(), acc: map[string][]occ{}}
}

// decide returns whether e owns its id, recording it when it is a new owner.
func (o *oracle) decide(e Entry) bool {
	t := e.Time.UnixMilli()
	var self, found, tomb bool
	latest := int64(-1)
	for _, f := range o.acc[string(e.ID)] {
		switch {
		case f.off == e.Offset:
			self = true
		case f.off < e.Offset && f.ms >= t-o.horizon:
			found = true
			if f.off > latest {
				latest, tomb = f.off, f.tomb
			}
		}
	}
	if self {
		return true
	}
	owned := found && !tomb // someone holds the id
	if e.Release && (!owned || e.RetryOf != latest) {
		return false
	}
	if !e.Release && owned && (e.RetryOf < 0 || e.RetryOf != latest) {
		return false
	}
	o.acc[string(e.ID)] = append(o.acc[string(e.ID)], occ{off: e.Offset, ms: t, tomb: e.Release})
	return true
}

// logSpec shapes a random log.
type logSpec struct {
	n       int           // entries
	ids     int           // alphabet size: small, so duplicates are frequent
	horizon time.Duration // gaps straddle it
	back    bool          // let time step back now and then (a broker clock step)
}

// randomLog returns a log and the oracle's answers for it, processed in
// order. Times move in steps chosen to land on, just before and just after
// the horizon; RetryOf points at accepted occurrences (sometimes out of the
// horizon) or at arbitrary earlier records.
func randomLog(r *rand.Rand, sp logSpec, start time.Time) ([]Entry, []bool) {
	o := newOracle(sp.horizon)
	h := sp.horizon.Milliseconds()
	steps := []int64{0, 0, 0, 1, h / 7, h / 4, h / 2, h - 1, h, h + 1, 2 * h}
	t := start.UnixMilli()
	off := int64(r.IntN(3))
	log := make([]Entry, 0, sp.n)
	want := make([]bool, 0, sp.n)
	for range sp.n {
		if r.IntN(4) == 0 {
			t += steps[r.IntN(len(steps))]
		}
		if sp.back && r.IntN(50) == 0 {
			t -= h / 3
		}
		id := []byte{'k', byte('a' + r.IntN(sp.ids))}
		if r.IntN(3) == 0 {
			id = append(id, make([]byte, r.IntN(MaxIDLen-2))...) // long ids too
			id[len(id)-1] = byte(len(id))
		}
		e := Entry{ID: id, Offset: off, Time: time.UnixMilli(t), RetryOf: -1}
		switch r.IntN(10) {
		case 0, 1:
			if acc := o.acc[string(id)]; len(acc) > 0 {
				e.RetryOf = acc[r.IntN(len(acc))].off
			}
		case 2:
			if len(log) > 0 {
				e.RetryOf = log[r.IntN(len(log))].Offset
			}
		case 3: // a release, of an owner or of anything recorded
			if acc := o.acc[string(id)]; len(acc) > 0 {
				e.Release, e.RetryOf = true, acc[len(acc)-1-r.IntN(min(len(acc), 2))].off
			}
		}
		log = append(log, e)
		want = append(want, o.decide(e))
		off += 1 + int64(r.IntN(2))
	}
	return log, want
}

// randomSplits cuts n entries into batches of random size.
func randomSplits(r *rand.Rand, n, max int) [][2]int {
	var out [][2]int
	for i := 0; i < n; {
		j := min(n, i+1+r.IntN(max))
		out = append(out, [2]int{i, j})
		i = j
	}
	return out
}
