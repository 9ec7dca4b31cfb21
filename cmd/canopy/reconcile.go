package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/internal/wait"
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

Output: one line per range, "TOPIC PARTITION FIRST LAST RECORDS".`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runReconcile(cmd.Context(), cfg, dryRun, watch)
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list the unacknowledged ranges, change nothing")
	cmd.Flags().DurationVar(&watch, "watch", 0, "repeat at this interval until interrupted (0 = once)")
	return cmd
}

func runReconcile(ctx context.Context, cfg *config, dryRun bool, watch time.Duration) error {
	log := cfg.logger()
	p, err := openPipeline(ctx, cfg, log, nil, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.brokers()...))
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	r := &ingest.Reconciler{
		Client: cl, Topic: cfg.get("kafka.events_topic"), Group: cfg.get("kafka.group"),
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
		for _, g := range gaps {
			fmt.Printf("%s %d %d %d %d\n", r.Topic, g.Partition, g.First, g.Last, g.Records)
		}
		if err != nil {
			return err
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
