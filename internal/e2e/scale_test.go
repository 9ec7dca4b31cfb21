package e2e

import (
	"os"
	"strconv"
	"testing"
)

// scaled is n, a data size of an oracle test (events, entities, hierarchy
// changes), times CANOPY_TEST_SCALE (default 1). The defaults keep a full
// CI run, with its ClickHouse 26.9 and cluster runs beside the main one,
// within its time on two cores; scripts/test runs those two subsets at a
// smaller scale, and a soak run sets a larger one (e.g.
// CANOPY_TEST_SCALE=5 go test -run Oracle ./internal/e2e). The result is
// never below least, the smallest size that still exercises what the test
// is about.
func scaled(t testing.TB, n, least int) int {
	t.Helper()
	s := os.Getenv("CANOPY_TEST_SCALE")
	if s == "" {
		return max(n, least)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || f > 1000 {
		t.Fatalf("CANOPY_TEST_SCALE=%q: want a number above 0 and at most 1000", s)
	}
	return max(int(float64(n)*f), least)
}
