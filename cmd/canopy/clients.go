package main

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"
)

// openPostgres connects and pings, so a bad DSN fails at once with a clear error.
func openPostgres(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, usageError{fmt.Errorf("postgres DSN: %w", err)}
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres %s@%s:%d: %w", pcfg.ConnConfig.User, pcfg.ConnConfig.Host, pcfg.ConnConfig.Port, err)
	}
	return pool, nil
}

// openClickHouse connects over the native protocol (the only one ClickHouse
// 18.16 speaks with clickhouse-go) and pings.
func openClickHouse(ctx context.Context, dsn string) (driver.Conn, error) {
	opts, err := clickhouse.ParseDSN(dsn)
	if err != nil {
		return nil, usageError{fmt.Errorf("clickhouse DSN: %w", err)}
	}
	if opts.Protocol != clickhouse.Native {
		return nil, usageError{fmt.Errorf("clickhouse DSN: only the native protocol (clickhouse://) is supported")}
	}
	// The database in the DSN may not exist yet (before migrate); every
	// statement names its database explicitly.
	opts.Auth.Database = "default"
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 5 * time.Second
	}
	opts.MaxOpenConns = 16
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("clickhouse: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := conn.Ping(pctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("clickhouse %v: %w", opts.Addr, err)
	}
	return conn, nil
}
