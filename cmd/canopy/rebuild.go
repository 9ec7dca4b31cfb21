package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/canopyhq/canopy/restate"
	"github.com/canopyhq/canopy/schema"
)

func newRebuild(cfg *config) *cobra.Command {
	var (
		from, to string
		waitFor  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "rebuild --from DATE --to DATE",
		Short: "Recompute the rollups of a range of days from ClickHouse events and swap them in per partition",
		Long: `rebuild recomputes rollup_hourly, rollup_daily and rollup_daily_current for the
UTC days FROM through TO (both included) from the events table, with the
hierarchy as it is now recorded, and swaps each affected monthly partition in
whole (rows of the month outside the range are kept as they are): use it after
a table was lost or damaged, or to recompute the past after an upgrade.

Workers may keep running. rebuild pauses new batches while it works (they wait,
nothing is lost), waits up to --wait for batches already begun, and lifts the
pause when done; if it dies, the pause lapses by itself within 30 s.

Hierarchy changes the restater parked (canopy restate status) are resolved by
a rebuild whose days cover every event: it marks them resolved and prints how
many. A narrower rebuild leaves them parked and says so.`,
		Example: `  canopy rebuild --from 2026-10-01 --to 2026-10-31`,
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return usageError{fmt.Errorf("give the days to rebuild: --from DATE --to DATE")}
			}
			lo, err := parseDay("--from", from)
			if err != nil {
				return err
			}
			hi, err := parseDay("--to", to)
			if err != nil {
				return err
			}
			if hi.Before(lo) {
				return usageError{fmt.Errorf("--to %s is before --from %s", to, from)}
			}
			ctx := cmd.Context()
			log := cfg.logger()
			p, err := openPipeline(ctx, cfg, log, nil, nil)
			if err != nil {
				return err
			}
			defer p.Close()
			rb := &restate.Rebuild{
				PG: p.pool, CH: p.ch, Shards: p.shards, Schema: p.chs, Resolver: p.resolver, Refresh: p.resolver.Refresh,
				Policy: p.policy, Log: log, Wait: waitFor,
			}
			start := time.Now()
			st, err := rb.Run(ctx, lo, hi)
			if err != nil {
				return err
			}
			var rows []string
			for _, g := range p.chs.ConfiguredGrains() {
				rows = append(rows, fmt.Sprintf("%s %d", g.Table, st.Rows[g.Table]))
			}
			for _, t := range []string{schema.TableRollupAsIs} {
				rows = append(rows, fmt.Sprintf("%s %d", t, st.Rows[t]))
			}
			sort.Strings(st.Partitions)
			fmt.Printf("rebuild: %s … %s: %d events at hierarchy version %d, %s rows, partitions %s swapped in %s\n",
				lo.Format(time.DateOnly), hi.Format(time.DateOnly), st.Events, st.Version,
				strings.Join(rows, ", "), strings.Join(st.Partitions, " "), time.Since(start).Round(time.Millisecond))
			if st.Resolved > 0 {
				fmt.Printf("rebuild: resolved %d parked hierarchy changes (through version %d)\n", st.Resolved, st.Version)
			}
			if st.ParkedLeft > 0 {
				fmt.Printf("rebuild: %d parked hierarchy changes stay unresolved: events span %s … %s; rebuild every day with events to resolve them\n",
					st.ParkedLeft, st.EventsFrom.UTC().Format(time.DateOnly), st.EventsTo.UTC().Format(time.DateOnly))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "first day (YYYY-MM-DD, UTC)")
	cmd.Flags().StringVar(&to, "to", "", "last day, included (YYYY-MM-DD, UTC)")
	cmd.Flags().DurationVar(&waitFor, "wait", 2*time.Minute, "how long to wait for batches already begun")
	return cmd
}

func parseDay(flag, v string) (time.Time, error) {
	t, err := time.Parse(time.DateOnly, v)
	if err != nil {
		return t, usageError{fmt.Errorf("%s %q: want a date, YYYY-MM-DD", flag, v)}
	}
	return t, nil
}
