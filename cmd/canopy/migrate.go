package main

import (
	"context"
	"fmt"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
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
	reader := ingest.Reader{User: cfg.get("clickhouse.reader_user"), Password: cfg.get("clickhouse.reader_password"), Raw: cfg.bool("clickhouse.reader_raw")}
	writer, writerPassword := cfg.get("clickhouse.writer_user"), cfg.get("clickhouse.writer_password")
	for _, u := range []struct{ key, user, password string }{
		{"clickhouse.reader", reader.User, reader.Password}, {"clickhouse.writer", writer, writerPassword},
	} {
		if err := schema.CheckIdentifier(u.key+"_user", u.user); err != nil {
			return usageError{err}
		}
		// The reader's password was once its name by default: refuse that.
		if u.password != "" && u.password == u.user {
			return usageError{fmt.Errorf("setting %s_password: equal to %s_user; choose a password that is not the user's name", u.key, u.key)}
		}
	}
	pool, err := openPostgres(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := hierarchy.NewStore(pool).Migrate(ctx); err != nil {
		return err
	}
	log.Info("postgres schema up to date")
	ch, err := openClickHouse(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	validated := chs
	chs = ingest.ProbeEngine(ctx, ch, chs)
	if chs.Engine == schema.EnginePlain {
		log.Warn("this ClickHouse has neither ZooKeeper/Keeper nor non_replicated_deduplication_window: " +
			"new tables cannot deduplicate, so a batch replayed after a crash may be counted twice; configure Keeper for exactly-once")
	}
	if chs.Cluster != "" {
		if err := migrateNodes(ctx, cfg, validated); err != nil {
			return err
		}
	} else if err := ingest.MigrateClickHouse(ctx, ch, chs); err != nil {
		return err
	}
	log.Info("clickhouse schema up to date", "database", chs.Database, "engine", chs.Engine, "measures", chs.Measures.Names())
	ensureUsers(ctx, cfg, ch, chs, writer, writerPassword, reader)
	return nil
}

// ensureUsers creates (or, on 18.16, checks) the writer and reader users.
// A user whose password is not set is left alone with a warning: the
// rollups are ready, only that login is missing.
func ensureUsers(ctx context.Context, cfg *config, ch driver.Conn, chs schema.ClickHouse, writer, writerPassword string, reader ingest.Reader) {
	log := cfg.logger()
	login, err := clickHouseOptions(cfg, "", "")
	if err != nil {
		log.Warn("writer and read-only users not checked", "err", err)
		return
	}
	if writerPassword == "" {
		log.Warn("writer user not provided: set clickhouse.writer_password (or its _file) to have migrate create it; "+
			"workers then log in as it (clickhouse.dsn user "+writer+", clickhouse.password) instead of an admin", "user", writer)
	} else if status, err := ingest.EnsureWriter(ctx, ch, login, chs.Database, writer, writerPassword); err != nil {
		log.Warn("writer user not available", "user", writer, "err", err)
	} else {
		log.Info("writer user ready", "user", writer, "how", string(status), "may", "INSERT, SELECT on "+chs.Database)
	}
	if reader.Password == "" {
		log.Warn("read-only user not provided: set clickhouse.reader_password (or its _file) to have migrate create it", "user", reader.User)
		return
	}
	status, err := ingest.EnsureReader(ctx, ch, login, chs, reader)
	if err != nil {
		log.Warn("read-only user not available", "user", reader.User, "err", err)
		return
	}
	log.Info("read-only user ready", "user", reader.User, "how", string(status), "raw", reader.Raw)
}

// migrateNodes creates the tables on every replica of every shard of
// clickhouse.shards: a table is local to its server, so each node gets the
// local parts of the sharded tables, the Distributed tables over them and
// its replica of the tables whole on every node. Every node must
// replicate through ZooKeeper or Keeper, with its shard and replica macros.
func migrateNodes(ctx context.Context, cfg *config, chs schema.ClickHouse) error {
	log := cfg.logger()
	for i, replicas := range cfg.shards {
		for _, addr := range replicas {
			opts, err := clickHouseOptions(cfg, "", "")
			if err != nil {
				return err
			}
			opts.Addr = []string{addr}
			conn, err := clickhouse.Open(opts)
			if err != nil {
				return fmt.Errorf("clickhouse shard %d, %s: %w", i+1, addr, err)
			}
			err = migrateNode(ctx, conn, chs)
			_ = conn.Close()
			if err != nil {
				return cfg.scrub(fmt.Errorf("clickhouse shard %d, %s: %w", i+1, addr, err))
			}
			log.Info("clickhouse node up to date", "shard", i+1, "node", addr)
		}
	}
	return nil
}

func migrateNode(ctx context.Context, conn driver.Conn, chs schema.ClickHouse) error {
	probed := ingest.ProbeEngine(ctx, conn, chs)
	if probed.Engine != schema.EngineReplicated || probed.ZooKeeperPrefix != chs.ZooKeeperPrefix {
		return fmt.Errorf("a cluster's tables are Replicated: the node needs ZooKeeper (or Keeper) and the shard and replica macros")
	}
	return ingest.MigrateClickHouse(ctx, conn, probed)
}
