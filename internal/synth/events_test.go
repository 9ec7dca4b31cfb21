package synth

import (
	"math"
	"slices"
	"testing"
)

func collect(t *testing.T, g Events) []Event {
	t.Helper()
	var out []Event
	if err := g.Each(func(_ int, e Event) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestEachDeterministic(t *testing.T) {
	for _, d := range []Distribution{Uniform, Zipf} {
		t.Run(d.String(), func(t *testing.T) {
			g := Events{Seed: 7, Count: 5000, Entities: 1000, Distribution: d, Duplicates: 0.01}
			a, b := collect(t, g), collect(t, g)
			if !slices.Equal(a, b) {
				t.Fatal("the same configuration gave different events")
			}
			g.Seed = 8
			if slices.Equal(a, collect(t, g)) {
				t.Fatal("seeds 7 and 8 gave the same events")
			}
			for _, e := range a {
				if e.EntityID < 1 || e.EntityID > g.Entities {
					t.Fatalf("entity %d outside 1..%d", e.EntityID, g.Entities)
				}
			}
		})
	}
}

// TestZipfSkew checks the share of events that the most frequent 1% of
// entities get against the Zipf formula, P(rank k) = k^-s / H(N, s) with
// H(N, s) = Σ_{k=1..N} k^-s, summed here directly, apart from the sampler.
func TestZipfSkew(t *testing.T) {
	const (
		entities = 10_000
		events   = 400_000
		top      = entities / 100
	)
	harmonic := func(n int, s float64) float64 {
		var h float64
		for k := n; k >= 1; k-- { // smallest terms first
			h += math.Pow(float64(k), -s)
		}
		return h
	}
	for _, tc := range []struct {
		name             string
		dist             Distribution
		s                float64
		zipfy            bool    // want from the formula
		wantTop, wantMax float64 // expected share of the top 1% and of the hottest entity
		tolTop, tolMax   float64 // absolute tolerance
	}{
		{name: "uniform", dist: Uniform, wantTop: 0.01, tolTop: 0.01, wantMax: 1.0 / entities, tolMax: 0.0003},
		{name: "zipf default s", dist: Zipf, zipfy: true, s: DefaultZipfS},
		{name: "zipf s=1.5", dist: Zipf, zipfy: true, s: 1.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := Events{Seed: 3, Count: events, Entities: entities, Distribution: tc.dist}
			if tc.s != DefaultZipfS {
				g.ZipfS = tc.s
			}
			if tc.zipfy {
				h := harmonic(entities, tc.s)
				tc.wantTop, tc.wantMax = harmonic(top, tc.s)/h, 1/h
				// One standard deviation of sampling noise is under 0.1 point at
				// this size; choosing the top 1% by observed counts adds a little.
				tc.tolTop, tc.tolMax = 0.005, 0.003
			}
			count := make([]int, entities+1)
			for _, e := range collect(t, g) {
				count[e.EntityID]++
			}
			ids := make([]int, 0, entities)
			for id := 1; id <= entities; id++ {
				ids = append(ids, id)
			}
			slices.SortFunc(ids, func(a, b int) int { return count[b] - count[a] })
			var inTop, idSum int
			for _, id := range ids[:top] {
				inTop += count[id]
				idSum += id
			}
			gotTop, gotMax := float64(inTop)/events, float64(count[ids[0]])/events
			t.Logf("top 1%% of entities: %.4f of events (want %.4f); hottest: %.4f (want %.4f)", gotTop, tc.wantTop, gotMax, tc.wantMax)
			if math.Abs(gotTop-tc.wantTop) > tc.tolTop {
				t.Errorf("top 1%% of entities got %.4f of events, want %.4f ± %.4f", gotTop, tc.wantTop, tc.tolTop)
			}
			if math.Abs(gotMax-tc.wantMax) > tc.tolMax {
				t.Errorf("the hottest entity got %.4f of events, want %.4f ± %.4f", gotMax, tc.wantMax, tc.tolMax)
			}
			// The permutation spreads hot ranks over all ids: the hot entities'
			// mean id is near the middle, not among the lowest (the roots).
			if mean := float64(idSum) / top; tc.zipfy && (mean < entities/4 || mean > 3*entities/4) {
				t.Errorf("hot entities' mean id %.0f: ranks are not spread over the ids", mean)
			}
		})
	}
}

func TestZipfInvalid(t *testing.T) {
	for _, tc := range []struct {
		name string
		g    Events
	}{
		{"s = 1", Events{Count: 1, Entities: 10, Distribution: Zipf, ZipfS: 1}},
		{"s < 1", Events{Count: 1, Entities: 10, Distribution: Zipf, ZipfS: 0.5}},
		{"no entities", Events{Count: 1, Distribution: Zipf}},
		{"unknown distribution", Events{Count: 1, Entities: 10, Distribution: Distribution(9)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			called := false
			if err := tc.g.Each(func(int, Event) error { called = true; return nil }); err == nil || called {
				t.Fatalf("Each = %v, called fn %v; want an error before any event", err, called)
			}
		})
	}
}

func TestParseDistribution(t *testing.T) {
	for _, d := range []Distribution{Uniform, Zipf} {
		if got, err := ParseDistribution(d.String()); err != nil || got != d {
			t.Errorf("ParseDistribution(%q) = %v, %v", d.String(), got, err)
		}
	}
	if _, err := ParseDistribution("pareto"); err == nil {
		t.Error("ParseDistribution(pareto) did not fail")
	}
}
