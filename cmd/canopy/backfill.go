package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/ingest/pgsource"
)

func newBackfill(cfg *config) *cobra.Command {
	var (
		batch, parallel          int
		topic, from, to          string
		query, queryDSN, mapping string
		spoolDir                 string
	)
	cmd := &cobra.Command{
		Use:   "backfill FILE|DIR|GLOB... | --topic TOPIC [--from T|OFFSET] [--to T|OFFSET] | --query SQL [--map FIELD=COLUMN,...]",
		Short: "Load history from files, a Kafka range or a Postgres query through the live pipeline's exactly-once path",
		Long: `backfill ingests history with the same validation, fan-out and exactly-once
bookkeeping as the worker. Bad records go to the dead letters. One source per run:

  files    NDJSON (.ndjson, .jsonl, .json) and CSV (.csv) files, plain or gzip
           (.gz), given as files, directories or globs. CSV files need a header
           naming event_id, entity_id, occurred_at and type (and any measures).
  --topic  a Kafka topic, every partition, from --from (inclusive) to --to
           (exclusive). Each bound is an offset (the same in every partition) or
           a time (RFC 3339, or a date meaning its UTC midnight: the first record
           whose timestamp is at or after it). Without --from: each partition's
           start; without --to: its end when the backfill starts.
  --query  a PostgreSQL query (on --query-dsn, default postgres.dsn) whose
           columns are named event_id, entity_id, occurred_at, type and the
           measures, or mapped with --map event_id=id,occurred_at=created_at,...
           The result is spooled to --spool-dir first and read from there.

It is resumable: killed at any point and run again with the same arguments, it
skips what it finished and redoes exactly what it was writing. It is
idempotent: a second run changes nothing. It may run while workers run: an
event_id that also arrives through Kafka counts once.

With ingest.dedup=partitioned the workers own the event ids, so backfill
forwards the records to the by-id topic (kafka.byid_topic), waits until the
workers have acknowledged every one, and then reports what became of them.
With no worker in the group it runs one itself while it waits. A rerun also
waits for the records an interrupted run forwarded (it reports them as
already done).`,
		Example: `  canopy backfill history/2025-*.ndjson.gz
  canopy backfill --topic canopy.events.archive --from 2026-01-01 --to 2026-02-01
  canopy backfill --query "SELECT id, user_id, created_at, kind, total FROM sales" \
      --query-dsn postgres://app@db/shop --map event_id=id,entity_id=user_id,occurred_at=created_at,type=kind,amount=total`,
		RunE: func(cmd *cobra.Command, a []string) error {
			ctx := cmd.Context()
			log := cfg.logger()
			kinds := 0
			for _, set := range []bool{len(a) > 0, topic != "", query != ""} {
				if set {
					kinds++
				}
			}
			if kinds != 1 {
				return usageError{fmt.Errorf("give exactly one source: files, --topic or --query")}
			}
			if (from != "" || to != "") && topic == "" {
				return usageError{fmt.Errorf("--from and --to go with --topic")}
			}
			if (queryDSN != "" || mapping != "") && query == "" {
				return usageError{fmt.Errorf("--query-dsn and --map go with --query")}
			}
			var (
				inputs  []ingest.Input
				total   int64
				bytes   = true
				cleanup func()
				lo, hi  ingest.KafkaBound // of --topic
			)
			switch {
			case len(a) > 0:
				files, err := ingest.ExpandInputs(a)
				if err != nil {
					return err
				}
				for _, f := range files {
					if err := f.CheckHeader(); err != nil {
						return err
					}
					inputs = append(inputs, f)
				}
			case topic != "":
				var err error
				if lo, err = kafkaBound("--from", from); err != nil {
					return err
				}
				if hi, err = kafkaBound("--to", to); err != nil {
					return err
				}
				inputs, err = ingest.KafkaRange(ctx, cfg.kafkaOpts(), topic, lo, hi, log)
				if err != nil {
					return err
				}
				bytes = false
			default:
				f, clean, err := spoolQuery(ctx, cfg, log, query, queryDSN, mapping, spoolDir)
				if err != nil {
					return err
				}
				inputs, cleanup = []ingest.Input{f}, clean
			}
			for _, in := range inputs {
				total += in.Total()
			}
			if topic != "" {
				log.Info("kafka range resolved", "topic", topic, "from", lo, "to", hi, "partitions", len(inputs), "records", total)
			}
			start := time.Now()
			var (
				st  ingest.BackfillStats
				err error
			)
			if cfg.partitioned() {
				st, err = forward(ctx, cfg, log, inputs, batch, progress(total, bytes))
			} else {
				var p *pipeline
				if p, err = openPipeline(ctx, cfg, log, nil, nil); err != nil {
					return err
				}
				defer p.Close()
				// An unknown entity is dead-lettered after one catch-up: a
				// backfill expects its hierarchy to be loaded first.
				p.proc.Retry.Publisher = nil
				bf := &ingest.Backfill{Processor: p.proc, BatchRecords: batch, Parallel: parallel, Progress: progress(total, bytes), Log: log}
				st, err = bf.Run(ctx, inputs)
			}
			fmt.Fprintln(os.Stderr)
			fmt.Println(summary(st, time.Since(start)))
			if err == nil && cleanup != nil {
				cleanup()
			}
			return err
		},
	}
	cmd.Flags().IntVar(&batch, "batch", 25000, "records per batch (keep it the same when resuming)")
	cmd.Flags().IntVar(&parallel, "parallel", 3, "batches written at once (with ingest.dedup=partitioned the workers write them)")
	cmd.Flags().StringVar(&topic, "topic", "", "backfill from this Kafka topic")
	cmd.Flags().StringVar(&from, "from", "", "with --topic: first offset or time (inclusive)")
	cmd.Flags().StringVar(&to, "to", "", "with --topic: last offset or time (exclusive)")
	cmd.Flags().StringVar(&query, "query", "", "backfill from this PostgreSQL query")
	cmd.Flags().StringVar(&queryDSN, "query-dsn", "", "with --query: the database to query (default: postgres.dsn)")
	cmd.Flags().StringVar(&mapping, "map", "", "with --query: event fields taken from differently named columns, FIELD=COLUMN,...")
	cmd.Flags().StringVar(&spoolDir, "spool-dir", "", "with --query: where the result is spooled (default: the user cache dir)")
	return cmd
}

// kafkaBound parses a --from/--to value: an offset, an RFC 3339 time or a
// date (its UTC midnight).
func kafkaBound(flag, v string) (ingest.KafkaBound, error) {
	if v == "" {
		return ingest.KafkaBound{}, nil
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return ingest.KafkaBound{}, usageError{fmt.Errorf("%s %d: offsets are not negative", flag, n)}
		}
		return ingest.KafkaBound{Offset: n, IsOffset: true}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, time.DateOnly} {
		if t, err := time.Parse(layout, v); err == nil {
			return ingest.KafkaBound{Time: t}, nil
		}
	}
	return ingest.KafkaBound{}, usageError{fmt.Errorf("%s %q: want an offset, an RFC 3339 time or a date (YYYY-MM-DD)", flag, v)}
}

// spoolQuery runs a --query backfill's query into its spool file and returns
// it with a function that removes the spool once the backfill is done.
func spoolQuery(ctx context.Context, cfg *config, log *slog.Logger, query, dsn, mapping, dir string) (ingest.InputFile, func(), error) {
	if dsn == "" {
		dsn = cfg.get("postgres.dsn")
	}
	fields := append([]string(nil), pgsource.Required...)
	for _, m := range cfg.measures {
		fields = append(fields, m.Name)
	}
	m, err := pgsource.ParseMap(mapping, fields)
	if err != nil {
		return ingest.InputFile{}, nil, usageError{err}
	}
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return ingest.InputFile{}, nil, fmt.Errorf("no cache dir for the spool (%w); give --spool-dir", err)
		}
		dir = filepath.Join(cache, "canopy", "backfill")
	}
	q := pgsource.Query{DSN: dsn, SQL: query, Map: m, Fields: fields}
	start := time.Now()
	f, err := pgsource.Spool(ctx, q, dir, func(rows int64) {
		log.Info("spooling query result", "rows", rows, "elapsed", time.Since(start).Round(time.Millisecond))
	})
	if err != nil {
		return f, nil, err
	}
	log.Info("query result spooled", "file", f.Path, "size", bytesize(f.Size), "source", f.Label)
	return f, func() { _ = os.Remove(f.Path) }, nil
}

// progress returns a progress callback: a bar on a terminal, a log line
// every 5 s otherwise.
func progress(total int64, bytes bool) func(done, records int64) {
	start := time.Now()
	if term.IsTerminal(int(os.Stderr.Fd())) {
		bar := progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionShowBytes(bytes),
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
		unit := bytesize
		if !bytes {
			unit = func(n int64) string { return strconv.FormatInt(n, 10) + " offsets" }
		}
		fmt.Fprintf(os.Stderr, "backfill: %d records, %s of %s (%.0f%%), %.0f records/s, eta %s\n",
			records, unit(bytesDone), unit(total), 100*float64(bytesDone)/float64(max(total, 1)),
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
