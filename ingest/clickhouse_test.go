package ingest

import (
	"testing"
	"time"
)

// Every month of a block — each becomes its own part, deduplicated by its
// own hash — carries the batch's unit on exactly one row, so the parts of
// two batches with otherwise equal rows always differ.
func TestUnitColumnMarksEveryMonth(t *testing.T) {
	day := func(s string) time.Time { d, _ := time.Parse(time.DateOnly, s); return d }
	buckets := []time.Time{day("2026-10-30"), day("2026-11-01"), day("2026-10-31"), day("2026-11-02"), day("2026-12-01"), day("2026-10-30")}
	got := unitColumn(buckets, "t/0/5")
	perMonth := map[time.Month]int{}
	for i, u := range got {
		switch u {
		case "t/0/5":
			perMonth[buckets[i].Month()]++
		case "":
		default:
			t.Fatalf("row %d: unit %q", i, u)
		}
	}
	for _, m := range []time.Month{time.October, time.November, time.December} {
		if perMonth[m] != 1 {
			t.Errorf("%s carries the unit on %d rows, want 1 (%q)", m, perMonth[m], got)
		}
	}
	if len(unitColumn(nil, "x")) != 0 {
		t.Error("an empty block has units")
	}
}
