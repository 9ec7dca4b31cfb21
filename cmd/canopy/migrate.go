package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/schema"
)

func newMigrate(cfg *config) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or update the PostgreSQL and ClickHouse schemas (idempotent)",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runMigrate(cmd.Context(), cfg)
		},
	}
}

func runMigrate(ctx context.Context, cfg *config) error {
	log := cfg.logger()
	// Both names go unquoted into SQL (CREATE DATABASE, CREATE USER,
	// GRANT): refuse anything but a plain identifier before touching a
	// server.
	chs, err := cfg.chSchema()
	if err != nil {
		return usageError{err}
	}
	reader := cfg.get("clickhouse.reader_user")
	if err := schema.CheckIdentifier("clickhouse.reader_user", reader); err != nil {
		return usageError{err}
	}
	pool, err := openPostgres(ctx, cfg.get("postgres.dsn"))
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := hierarchy.NewStore(pool).Migrate(ctx); err != nil {
		return err
	}
	log.Info("postgres schema up to date")
	ch, err := openClickHouse(ctx, cfg.get("clickhouse.dsn"))
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	chs = ingest.ProbeEngine(ctx, ch, chs)
	if chs.Engine == schema.EnginePlain {
		log.Warn("this ClickHouse has neither ZooKeeper/Keeper nor non_replicated_deduplication_window: " +
			"new tables cannot deduplicate, so a batch replayed after a crash may be counted twice; configure Keeper for exactly-once")
	}
	if err := ingest.MigrateClickHouse(ctx, ch, chs); err != nil {
		return err
	}
	log.Info("clickhouse schema up to date", "database", chs.Database, "engine", chs.Engine, "measures", chs.Measures.Names())
	status, err := ingest.EnsureReader(ctx, ch, cfg.get("clickhouse.dsn"), chs.Database, reader, cfg.get("clickhouse.reader_password"))
	if err != nil {
		// The rollups are ready; only Grafana's login is missing.
		log.Warn("read-only user not available", "user", reader, "err", err)
		return nil
	}
	log.Info("read-only user ready", "user", reader, "how", string(status))
	return nil
}
