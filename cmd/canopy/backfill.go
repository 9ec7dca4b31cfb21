package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/canopyhq/canopy/ingest"
)

func newBackfill(cfg *config) *cobra.Command {
	var batch int
	cmd := &cobra.Command{
		Use:   "backfill FILE|DIR|GLOB...",
		Short: "Load history from NDJSON or CSV files (plain or .gz) through the live pipeline's exactly-once path",
		Long: `backfill reads NDJSON (.ndjson, .jsonl, .json) and CSV (.csv) files, plain or
gzip (.gz), given as files, directories or globs, and ingests their events with
the same validation, fan-out and exactly-once bookkeeping as the worker. Bad
records go to the dead letters. CSV files need a header naming event_id,
entity_id, occurred_at and type (and any measures).

It is resumable: killed at any point and run again with the same files, it
skips what it finished and redoes exactly what it was writing. It is
idempotent: a second run changes nothing. It may run while workers run: an
event_id that also arrives through Kafka counts once.`,
		Args: args(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			ctx := cmd.Context()
			log := cfg.logger()
			files, err := ingest.ExpandInputs(a)
			if err != nil {
				return err
			}
			var total int64
			for _, f := range files {
				if err := f.CheckHeader(); err != nil {
					return err
				}
				total += f.Size
			}
			p, err := openPipeline(ctx, cfg, log, nil, nil)
			if err != nil {
				return err
			}
			defer p.Close()
			// An unknown entity is dead-lettered after one catch-up: a
			// backfill expects its hierarchy to be loaded first.
			p.proc.Retry.Publisher = nil
			bf := &ingest.Backfill{Processor: p.proc, BatchRecords: batch, Progress: progress(total)}
			start := time.Now()
			st, err := bf.Run(ctx, files)
			fmt.Fprintln(os.Stderr)
			fmt.Println(summary(st, time.Since(start)))
			return err
		},
	}
	cmd.Flags().IntVar(&batch, "batch", 5000, "records per batch (keep it the same when resuming)")
	return cmd
}

// progress returns a progress callback: a bar on a terminal, a log line
// every 5 s otherwise.
func progress(total int64) func(bytesDone, records int64) {
	start := time.Now()
	if term.IsTerminal(int(os.Stderr.Fd())) {
		bar := progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetDescription("backfill"),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionSetPredictTime(true),
		)
		return func(bytesDone, records int64) {
			bar.Describe(fmt.Sprintf("backfill %d records (%.0f/s)", records, float64(records)/time.Since(start).Seconds()))
			_ = bar.Set64(bytesDone)
		}
	}
	var (
		mu   sync.Mutex
		last time.Time
	)
	return func(bytesDone, records int64) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) < 5*time.Second {
			return
		}
		last = time.Now()
		el := time.Since(start)
		eta := "?"
		if bytesDone > 0 {
			eta = (time.Duration(float64(el) * float64(total-bytesDone) / float64(bytesDone))).Round(time.Second).String()
		}
		fmt.Fprintf(os.Stderr, "backfill: %d records, %s of %s (%.0f%%), %.0f records/s, eta %s\n",
			records, bytesize(bytesDone), bytesize(total), 100*float64(bytesDone)/float64(max(total, 1)),
			float64(records)/el.Seconds(), eta)
	}
}

func bytesize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func summary(st ingest.BackfillStats, took time.Duration) string {
	var dead []string
	var n int64
	for c, k := range st.DeadLettered {
		dead = append(dead, fmt.Sprintf("%s %d", c, k))
		n += k
	}
	sort.Strings(dead)
	s := fmt.Sprintf("backfill: %d records in %s: %d accepted, %d duplicates, %d already done, %d dead-lettered",
		st.Records, took.Round(time.Millisecond), st.Accepted, st.Duplicates, st.Skipped, n)
	if len(dead) > 0 {
		s += " (" + strings.Join(dead, ", ") + ")"
	}
	return s
}
