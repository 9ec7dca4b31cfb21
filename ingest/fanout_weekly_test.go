package ingest

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/canopyhq/canopy/schema"
)

// isoMonday is the oracle's weekly bucket: the date of the Monday on or
// before t's UTC date, by the weekday, not by schema's arithmetic.
func isoMonday(t time.Time) int64 {
	t = t.UTC()
	back := (int(t.Weekday()) + 6) % 7 // Monday 0 … Sunday 6
	d := time.Date(t.Year(), t.Month(), t.Day()-back, 0, 0, 0, 0, time.UTC)
	return d.Unix()
}

// The batch path's weekly rollup (coarsen of the daily one, itself coarsened
// from the hourly fan-out) equals the weekly rollup built link by link with
// the oracle's Monday, and the hourly and daily rollups stay those of
// rollups(): same rows, order, counts and sums, across Sunday/Monday
// midnights, month and year ends (ISO weeks that straddle them), with
// chains of gaps and with keys too spread to pack (the comparison sort).
func TestCoarsenWeeklyEqualsWeeklyFanout(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	types := []string{"zeta", "alpha", "refund", "Sale", "sale"}
	// Mondays 00:00 UTC around which events fall: 2026-12-28 (week 53 of
	// 2026 straddles the year), 2027-03-01, and 1970-01-05.
	edges := []int64{
		time.Date(2026, 12, 28, 0, 0, 0, 0, time.UTC).Unix(),
		time.Date(2027, 1, 4, 0, 0, 0, 0, time.UTC).Unix(),
		time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC).Unix(),
		time.Date(1970, 1, 5, 0, 0, 0, 0, time.UTC).Unix(),
	}
	type batch struct {
		evs    []Event
		chains [][]Ancestor
	}
	var batches []batch
	for _, n := range []int{0, 1, 2, 50, 5000} {
		evs, chains := randomBatch(rng, n, types)
		batches = append(batches, batch{evs, chains})
	}
	var b batch
	for range 4000 {
		unix := edges[rng.IntN(len(edges))] + rng.Int64N(4*86400) - 2*86400
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
	var wide batch
	for i := range 2000 {
		unix := []int64{0, 1_790_000_000, 4_000_000_000}[i%3] + rng.Int64N(15*86400)
		chain := []Ancestor{{ID: 1 + rng.Int64N(3), Depth: 0}, {ID: 1 << 62, Depth: uint8(1 + rng.IntN(3))}}
		wide.evs = append(wide.evs, Event{Type: types[rng.IntN(len(types))], OccurredAt: time.Unix(unix, 0),
			Measures: []int64{rng.Int64N(2e6) - 1e6, rng.Int64N(10)}})
		wide.chains = append(wide.chains, chain)
	}
	batches = append(batches, wide)

	for bi, b := range batches {
		want := NewRollup(2)
		f, g := newFanoutBuilder(2, false, 0), newFanoutBuilder(2, false, 0)
		for i := range b.evs {
			ev := &b.evs[i]
			for _, a := range b.chains[i] {
				want.Add(RollupKey{EntityID: a.ID, Bucket: isoMonday(ev.OccurredAt), Depth: a.Depth, Type: ev.Type}, ev.Measures)
			}
			f.add(ev, b.chains[i])
			g.add(ev, b.chains[i])
		}
		want.Sort()
		h, d, more := f.rollupsWith([]schema.Grain{schema.Weekly})
		h0, d0 := g.rollups()
		sameRollup(t, bi, "hourly", h, h0)
		sameRollup(t, bi, "daily", d, d0)
		if len(more) != 1 || more[0].Grain.Table != schema.TableRollupWeekly {
			t.Fatalf("batch %d: coarser rollups %v", bi, more)
		}
		sameRollup(t, bi, "weekly", more[0].Rollup, want)
		if r := Regrain(d0, schema.Weekly); bi < 5 {
			sameRollup(t, bi, "Regrain weekly", r, want) // no zero rows in these
		}
	}
}

func sameRollup(t *testing.T, bi int, what string, got, want *Rollup) {
	t.Helper()
	if got.Len() != want.Len() {
		t.Fatalf("batch %d %s: %d rows, want %d", bi, what, got.Len(), want.Len())
	}
	for i := range want.Keys {
		if got.Keys[i] != want.Keys[i] || got.Events[i] != want.Events[i] ||
			got.Sums[0][i] != want.Sums[0][i] || got.Sums[1][i] != want.Sums[1][i] {
			t.Fatalf("batch %d %s row %d: got %+v %d %v %v, want %+v %d %v %v", bi, what, i,
				got.Keys[i], got.Events[i], got.Sums[0][i], got.Sums[1][i],
				want.Keys[i], want.Events[i], want.Sums[0][i], want.Sums[1][i])
		}
	}
}

// The fingerprint of the default grains is the one written before grains
// were configurable (so batches begun then replay); other grains are named
// in it, so a replay across a grain change is refused.
func TestFingerprintNamesGrains(t *testing.T) {
	p := &Processor{Decoder: NewDecoder(schema.DefaultMeasures(), 0)}
	def := p.Fingerprint()
	if strings.Contains(def, "grains") {
		t.Fatalf("default fingerprint %q names grains", def)
	}
	p.Grains = schema.DefaultGrains()
	if got := p.Fingerprint(); got != def {
		t.Fatalf("fingerprint with the default grains named %q, want %q", got, def)
	}
	p.Grains = []schema.Grain{schema.Hourly, schema.Daily, schema.Weekly}
	if got := p.Fingerprint(); got != def+" grains=hourly,daily,weekly" {
		t.Fatalf("fingerprint with weekly %q, want %q", got, def+" grains=hourly,daily,weekly")
	}
}
