package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/canopyhq/canopy/hierarchy"
)

func newRelay(cfg *config) *cobra.Command {
	return &cobra.Command{
		Use:   "relay",
		Short: "Publish hierarchy changes from the PostgreSQL outbox to the hierarchy topic, in commit order, exactly once",
		Long: `relay copies canopy.outbox to the hierarchy topic (default canopy.hierarchy, one
partition) in commit order. Run as many as you like: one holds a PostgreSQL
advisory lock and publishes, the others wait to take over. It resumes from the
last change committed to the topic, so a crash or a Kafka outage loses and
repeats nothing.

The active relay also purges canopy.outbox every 10 minutes: rows already on
the topic and recorded longer ago than relay.outbox_retention (default 168h)
are deleted, 10,000 at a time, with a log line of how many. Nothing reads
relayed rows (workers load canopy.entity_history and follow the topic), and
rows not yet on the topic are never deleted.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			retention, err := time.ParseDuration(cfg.get("relay.outbox_retention"))
			if err != nil || retention < 0 {
				return usageError{fmt.Errorf("relay.outbox_retention: %q is not a duration >= 0", cfg.get("relay.outbox_retention"))}
			}
			if retention == 0 {
				retention = -1 // keep forever; hierarchy.Relay reads 0 as its default
			}
			pctx := patiently(ctx, cfg.logger())
			pool, err := openPostgres(pctx, cfg)
			if err != nil {
				return err
			}
			defer pool.Close()
			// A refused login or certificate ends the relay here, instead of
			// in its retry loop.
			if err := awaitKafka(pctx, cfg); err != nil {
				return err
			}
			host, _ := os.Hostname()
			r := &hierarchy.Relay{
				Pool:    pool,
				Brokers: cfg.brokers(),
				Topic:   cfg.get("kafka.hierarchy_topic"),
				Name:    fmt.Sprintf("%s-%d", host, os.Getpid()),
				Log:     cfg.logger(),
				Opts:    cfg.kafkaOpts(),

				OutboxRetention: retention,
			}
			return r.Run(ctx)
		},
	}
}
