package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/internal/wait"
	"github.com/canopyhq/canopy/schema"
)

func newReconcile(cfg *config) *cobra.Command {
	var (
		dryRun bool
		watch  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "reconcile",
		Short: "Find unacknowledged offset ranges of the events topic and reprocess them",
		Long: `reconcile compares ingest_acks with the events topic: every offset below the
consumer group's committed offset must lie in an acknowledged range. The ranges
that do not (offsets moved by hand, a lost batch) are listed with --dry-run,
and otherwise processed through the same exactly-once path as the worker, so a
range that was in fact processed is skipped and no event counts twice. Safe to
run while workers run, and as often as you like; --watch repeats it.

Memory stays bounded: acknowledged ranges are read a page at a time and a
range's records a batch at a time, whatever the size of a gap. With --watch a
scan reads only the acknowledged ranges above the offset below which the
previous scan found everything acknowledged (or processed); a gap that still
holds records keeps that offset below it.

Output: one line per range, "TOPIC PARTITION FIRST LAST RECORDS", then one line
per error class of the failures not resolved yet, "failures CLASS COUNT" (replay
them with canopy dlq replay once their cause is fixed). With --watch it serves
/metrics on --http-addr: canopy_ack_gap_records (records in unacknowledged
ranges at the last scan) and canopy_reprocessed_records_total.

With ingest.dedup=partitioned it reconciles the by-id topic (kafka.byid_topic),
where the workers' batches are, and decides each record's event id from that
topic's log, in a temporary state of its own, exactly as the partition's owner
does.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runReconcile(cmd.Context(), cfg, dryRun, watch)
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list the unacknowledged ranges, change nothing")
	cmd.Flags().DurationVar(&watch, "watch", 0, "repeat at this interval until interrupted (0 = once)")
	return cmd
}

// reconcileDir holds reconcile's temporary event-id states, one slot per
// running reconcile, beside the workers' slots in ingest.state_dir.
func reconcileDir(cfg *config) string {
	return filepath.Join(cfg.get("ingest.state_dir"), "reconcile")
}

func runReconcile(ctx context.Context, cfg *config, dryRun bool, watch time.Duration) error {
	log := cfg.logger()
	if watch > 0 {
		ctx = patiently(ctx, log) // a long-running watch waits for its services
	}
	p, err := openPipeline(ctx, cfg, log, nil, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	topic, failuresOf := cfg.get("kafka.events_topic"), cfg.get("kafka.events_topic")
	if cfg.partitioned() {
		// Claims are decided from the by-id topic's log: a temporary state
		// rebuilt from it decides as the partition's owner does. It can
		// grow as large as a worker's, so it goes where the operator put
		// state (a slot of reconcileDir, not the system's temporary
		// directory); a run killed before it emptied its slot leaves it
		// to the next run that takes the slot, which empties it first.
		local, err := openPartitioned(ctx, cfg, log, reconcileDir(cfg), true, p.proc, nil)
		if err != nil {
			return err
		}
		defer func() { _ = local.Close() }()
		topic = cfg.get("kafka.byid_topic")
	}
	cl, err := kgo.NewClient(cfg.kafkaOpts()...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	gapRecords := prometheus.NewGauge(prometheus.GaugeOpts{Name: "canopy_ack_gap_records",
		Help: "Records below the committed offsets in ranges ingest_acks does not cover, at the last scan."})
	reprocessed := prometheus.NewCounter(prometheus.CounterOpts{Name: "canopy_reprocessed_records_total",
		Help: "Records of unacknowledged ranges processed by reconcile."})
	if watch > 0 {
		reg := prometheus.NewRegistry()
		reg.MustRegister(gapRecords, reprocessed)
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		ln, err := net.Listen("tcp", cfg.get("http.addr"))
		if err != nil {
			return usageError{fmt.Errorf("http.addr %s: %w", cfg.get("http.addr"), err)}
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer func() { _ = srv.Close() }()
	}
	r := &ingest.Reconciler{
		Client: cl, Topic: topic, Group: cfg.get("kafka.group"),
		Acks: p.proc.Sink.(*ingest.ClickHouseSink), Processor: p.proc, Log: log,
	}
	for {
		var (
			gaps []ingest.Gap
			err  error
		)
		if dryRun {
			gaps, err = r.Find(ctx)
		} else {
			if _, rerr := p.resolver.Refresh(ctx); rerr != nil {
				return rerr
			}
			gaps, err = r.Run(ctx)
		}
		total := 0
		for _, g := range gaps {
			fmt.Printf("%s %d %d %d %d\n", r.Topic, g.Partition, g.First, g.Last, g.Records)
			total += g.Records
		}
		if err != nil {
			return err
		}
		if dryRun {
			gapRecords.Set(float64(total))
		} else {
			gapRecords.Set(0)
			reprocessed.Add(float64(total))
		}
		failures, ferr := unresolvedFailures(ctx, p, failuresOf)
		if ferr != nil {
			return ferr
		}
		for _, f := range failures {
			fmt.Printf("failures %s %d\n", f.class, f.n)
		}
		verb := "reprocessed"
		if dryRun {
			verb = "found"
		}
		log.Info("reconcile done", "topic", r.Topic, "group", r.Group, "ranges_"+verb, len(gaps))
		if watch <= 0 || !wait.Sleep(ctx, watch) {
			return nil
		}
	}
}

type failureCount struct {
	class string
	n     uint64
}

// unresolvedFailures counts the failures of a topic's records that no
// replay has resolved, by error class.
func unresolvedFailures(ctx context.Context, p *pipeline, topic string) ([]failureCount, error) {
	rows, err := p.ch.Query(ctx, fmt.Sprintf(`SELECT error_class, count() FROM %s.%s FINAL
		WHERE source_topic = ? AND resolution = '' GROUP BY error_class ORDER BY error_class`,
		p.chs.Database, schema.TableFailures), topic)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", schema.TableFailures, err)
	}
	defer rows.Close()
	var out []failureCount
	for rows.Next() {
		var f failureCount
		if err := rows.Scan(&f.class, &f.n); err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, rows.Err()
}
