package schema

import (
	"strings"
	"testing"
	"time"
)

// The weekly bucket is the Monday of the ISO week, found here by walking
// back day by day until time.ISOWeek changes: no arithmetic shared with
// mondayOf.
func TestWeeklyBucketIsTheISOMonday(t *testing.T) {
	start := time.Date(2024, 12, 20, 0, 0, 0, 0, time.UTC)
	for h := 0; h < 24*60; h += 7 {
		at := start.Add(time.Duration(h)*time.Hour + 17*time.Minute)
		y, w := at.ISOWeek()
		day := time.Date(at.Year(), at.Month(), at.Day(), 0, 0, 0, 0, time.UTC)
		for {
			prev := day.AddDate(0, 0, -1)
			if py, pw := prev.ISOWeek(); py != y || pw != w {
				break
			}
			day = prev
		}
		if day.Weekday() != time.Monday {
			t.Fatalf("oracle: %s is not a Monday", day)
		}
		if got := Weekly.Bucket(at.Unix()); got != day.Unix() {
			t.Fatalf("week of %s = %s, want %s", at, time.Unix(got, 0).UTC(), day)
		}
	}
}

func TestParseGrains(t *testing.T) {
	gs, err := ParseGrains("rollup.grains", []string{"weekly", "hourly", "daily"})
	if err != nil || GrainNames(gs) != "hourly,daily,weekly" {
		t.Fatalf("ParseGrains = %v, %v; want hourly,daily,weekly in that order", GrainNames(gs), err)
	}
	if IsDefaultGrains(gs) || !IsDefaultGrains(nil) || !IsDefaultGrains(DefaultGrains()) {
		t.Fatal("IsDefaultGrains wrong")
	}
	for _, bad := range [][]string{{"hourly", "daily", "monthly"}, {"hourly", "daily", "daily"}, {"hourly", "weekly"}} {
		if _, err := ParseGrains("rollup.grains", bad); err == nil || !strings.Contains(err.Error(), "rollup.grains") {
			t.Errorf("ParseGrains(%v) = %v, want an error naming rollup.grains", bad, err)
		}
	}
	c := ClickHouse{Measures: DefaultMeasures(), Grains: gs}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range c.Tables() {
		names = append(names, tb.Name)
	}
	if got := strings.Join(names[:5], ","); got != "events,rollup_hourly,rollup_daily,rollup_weekly,rollup_daily_current" {
		t.Fatalf("tables %s", got)
	}
	if cols, ok := c.RollupTableColumns(TableRollupWeekly); !ok || cols[1].Type != "Date" {
		t.Fatalf("rollup_weekly columns %v", cols)
	}
}
