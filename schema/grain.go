package schema

import (
	"fmt"
	"slices"
	"strings"
)

// TableRollupWeekly is the table of the weekly grain, when configured.
const TableRollupWeekly = "rollup_weekly"

// Grain is one time grain of the as-was rollups: a table whose rows sum the
// fan-out by bucket, the start of the interval an event's time falls in.
// Every grain's buckets are unions of the next finer grain's (a day of
// hours, an ISO week of days), which is what lets the pipeline sum a
// coarser rollup from the finer one instead of fanning a batch out again.
type Grain struct {
	Name  string // as in the rollup.grains setting
	Table string
	// BucketType is the ClickHouse type of the bucket column.
	BucketType string
	// Of is the ClickHouse function from a DateTime to its bucket, for
	// SQL that reads a grain (dashboards, checks).
	Of string
	// Bucket is the start of the bucket holding a time, both in Unix
	// seconds (UTC). It truncates as the ClickHouse function does for
	// times from 1970 on.
	Bucket func(unix int64) int64
}

const (
	secondsPerHour = 3600
	secondsPerDay  = 86400
)

// The known grains, finest first.
var (
	Hourly = Grain{Name: "hourly", Table: TableRollupHourly, BucketType: "DateTime('UTC')", Of: "toStartOfHour",
		Bucket: func(u int64) int64 { return u - u%secondsPerHour }}
	Daily = Grain{Name: "daily", Table: TableRollupDaily, BucketType: "Date", Of: "toDate",
		Bucket: func(u int64) int64 { return u - u%secondsPerDay }}
	// Weekly is the ISO week, Monday to Sunday in UTC; its bucket is the
	// Monday's date (ClickHouse's toMonday).
	Weekly = Grain{Name: "weekly", Table: TableRollupWeekly, BucketType: "Date", Of: "toMonday", Bucket: mondayOf}
)

// mondayOf is the start of the ISO week (Monday 00:00 UTC) holding unix.
// 1970-01-01, day 0, was a Thursday: day d is a Monday when d+3 ≡ 0 mod 7.
func mondayOf(unix int64) int64 {
	d := unix / secondsPerDay
	if unix%secondsPerDay < 0 {
		d--
	}
	back := (d + 3) % 7
	if back < 0 {
		back += 7
	}
	return (d - back) * secondsPerDay
}

// KnownGrains are the grains rollup.grains accepts, finest first.
func KnownGrains() []Grain { return []Grain{Hourly, Daily, Weekly} }

// DefaultGrains are the grains of a configuration that names none.
func DefaultGrains() []Grain { return []Grain{Hourly, Daily} }

// ParseGrains returns the named grains, finest first. hourly and daily are
// required: the as-is view (rollup_daily_current), the restater and the
// dashboards are built on them. A name not known, or given twice, is an
// error naming the setting.
func ParseGrains(setting string, names []string) ([]Grain, error) {
	seen := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if !slices.ContainsFunc(KnownGrains(), func(g Grain) bool { return g.Name == n }) {
			return nil, fmt.Errorf("%s: unknown grain %q (known: %s)", setting, n, GrainNames(KnownGrains()))
		}
		if seen[n] {
			return nil, fmt.Errorf("%s: grain %q is named twice", setting, n)
		}
		seen[n] = true
	}
	for _, need := range DefaultGrains() {
		if !seen[need.Name] {
			return nil, fmt.Errorf("%s: must include %s (the as-is view and the dashboards are built on hourly and daily)", setting, need.Name)
		}
	}
	var out []Grain
	for _, g := range KnownGrains() {
		if seen[g.Name] {
			out = append(out, g)
		}
	}
	return out, nil
}

// GrainNames is "hourly,daily,…".
func GrainNames(gs []Grain) string {
	names := make([]string, len(gs))
	for i, g := range gs {
		names[i] = g.Name
	}
	return strings.Join(names, ",")
}

// IsDefaultGrains reports whether gs are the default grains.
func IsDefaultGrains(gs []Grain) bool {
	return len(gs) == 0 || GrainNames(gs) == GrainNames(DefaultGrains())
}

// CoarserGrains are the grains of gs coarser than daily: those summed from
// the daily rollup, which have no as-is table of their own (the as-is view
// of a week is the sum of its days in rollup_daily_current, exact since
// as-is rows carry no time-dependent attribution).
func CoarserGrains(gs []Grain) []Grain {
	var out []Grain
	for _, g := range gs {
		if g.Name != Hourly.Name && g.Name != Daily.Name {
			out = append(out, g)
		}
	}
	return out
}
