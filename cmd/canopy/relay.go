package main

import (
	"fmt"
	"os"

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
repeats nothing.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			pool, err := openPostgres(ctx, cfg.get("postgres.dsn"))
			if err != nil {
				return err
			}
			defer pool.Close()
			host, _ := os.Hostname()
			r := &hierarchy.Relay{
				Pool:    pool,
				Brokers: cfg.brokers(),
				Topic:   cfg.get("kafka.hierarchy_topic"),
				Name:    fmt.Sprintf("%s-%d", host, os.Getpid()),
				Log:     cfg.logger(),
			}
			return r.Run(ctx)
		},
	}
}
