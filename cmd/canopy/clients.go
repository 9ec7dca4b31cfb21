package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/canopyhq/canopy/internal/backoff"
	"github.com/canopyhq/canopy/internal/wait"
)

type patienceKey struct{}

// patiently marks ctx as a long-running command's (worker, relay,
// reconcile --watch): the services it opens through await are waited for,
// with backoff and a log line naming what is awaited, instead of failing
// the command. Services start in any order; the command comes up after them.
func patiently(ctx context.Context, log *slog.Logger) context.Context {
	return context.WithValue(ctx, patienceKey{}, log)
}

// await runs try until it succeeds or, unless ctx is patient, fails. A
// usage error (a bad DSN), a server that refuses this client's TLS or
// credentials (refusal: waiting cannot help) and the end of ctx always end
// it.
func await(ctx context.Context, service string, try func() error) error {
	log, patient := ctx.Value(patienceKey{}).(*slog.Logger)
	pace := backoff.New(time.Second, 30*time.Second)
	for {
		err := try()
		if err != nil {
			if cause := refusal(err); cause != "" {
				if ce := (connectionError{}); errors.As(err, &ce) {
					return err // already names service and cause
				}
				return connectionError{service: service, cause: cause, err: err}
			}
		}
		var usage usageError
		if err == nil || !patient || errors.As(err, &usage) || ctx.Err() != nil {
			return err
		}
		d := pace.Next()
		log.Warn("waiting for "+service, "err", err, "retry_in", d)
		if !wait.Sleep(ctx, d) {
			return err
		}
	}
}

// openPostgres connects to postgres.dsn and pings, so a bad DSN fails at
// once with a clear error; a patient ctx waits for the server. TLS is the
// DSN's (sslmode=verify-full&sslrootcert=…); postgres.password, if given,
// replaces the DSN's password.
func openPostgres(ctx context.Context, cfg *config) (pool *pgxpool.Pool, err error) {
	dsn := cfg.get("postgres.dsn")
	pcfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, usageError{cfg.scrub(fmt.Errorf("postgres DSN: %w", err))}
	}
	if pw := cfg.get("postgres.password"); pw != "" {
		pcfg.ConnConfig.Password = pw
	}
	err = await(ctx, "postgres", func() (err error) {
		defer func() { err = cfg.scrub(err) }()
		p, err := pgxpool.NewWithConfig(ctx, pcfg)
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := p.Ping(pctx); err != nil {
			p.Close()
			return fmt.Errorf("postgres %s@%s:%d: %w", pcfg.ConnConfig.User, pcfg.ConnConfig.Host, pcfg.ConnConfig.Port, err)
		}
		pool = p
		return nil
	})
	return pool, err
}

// openClickHouse connects to clickhouse.dsn over the native protocol (the
// only one ClickHouse 18.16 speaks with clickhouse-go) and pings. TLS comes
// from clickhouse.tls.* (or the DSN's secure=true); clickhouse.password, if
// given, replaces the DSN's password.
func openClickHouse(ctx context.Context, cfg *config) (driver.Conn, error) {
	return openClickHouseAs(ctx, cfg, "", "")
}

// openClickHouseAs is openClickHouse as another user (user and password
// replace the DSN's when user is not empty).
func openClickHouseAs(ctx context.Context, cfg *config, user, password string) (driver.Conn, error) {
	opts, err := clickHouseOptions(cfg, user, password)
	if err != nil {
		return nil, err
	}
	return dialClickHouse(ctx, cfg, "clickhouse", opts)
}

// dialClickHouse opens opts and pings, waiting while the server is
// unreachable; name ("clickhouse", "clickhouse shard 2") leads its errors.
func dialClickHouse(ctx context.Context, cfg *config, name string, opts *clickhouse.Options) (driver.Conn, error) {
	var conn driver.Conn
	err := await(ctx, name, func() (err error) {
		defer func() { err = cfg.scrub(err) }()
		c, err := clickhouse.Open(opts)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := c.Ping(pctx); err != nil {
			_ = c.Close()
			if opts.TLS == nil && closedEarly(err) {
				for _, a := range opts.Addr {
					if speaksTLS(ctx, a) {
						return connectionError{name, a, "the server speaks TLS on this port but clickhouse.tls.enabled is false", err}
					}
				}
			}
			return fmt.Errorf("%s %v: %w", name, opts.Addr, err)
		}
		conn = c
		return nil
	})
	return conn, err
}

// openShards connects to each shard of clickhouse.shards as openClickHouse
// does (the same login and TLS), a connection per shard over its replicas
// in the order given: the first that answers takes the writes, the next
// when it fails. Nil without a cluster.
func openShards(ctx context.Context, cfg *config) ([]driver.Conn, error) {
	var conns []driver.Conn
	for i, replicas := range cfg.shards {
		opts, err := clickHouseOptions(cfg, "", "")
		if err != nil {
			return nil, err
		}
		opts.Addr = replicas
		opts.ConnOpenStrategy = clickhouse.ConnOpenInOrder
		conn, err := dialClickHouse(ctx, cfg, fmt.Sprintf("clickhouse shard %d", i+1), opts)
		if err != nil {
			for _, c := range conns {
				_ = c.Close()
			}
			return nil, err
		}
		conns = append(conns, conn)
	}
	return conns, nil
}

// clickHouseOptions are the connection options of clickhouse.dsn with
// clickhouse.password and clickhouse.tls.* applied, as user (with password)
// when user is not empty. Every ClickHouse login of canopy starts from them.
func clickHouseOptions(cfg *config, user, password string) (*clickhouse.Options, error) {
	opts, err := clickhouse.ParseDSN(cfg.get("clickhouse.dsn"))
	if err != nil {
		return nil, usageError{cfg.scrub(fmt.Errorf("clickhouse DSN: %w", err))}
	}
	if opts.Protocol != clickhouse.Native {
		return nil, usageError{fmt.Errorf("clickhouse DSN: only the native protocol (clickhouse://) is supported")}
	}
	if pw := cfg.get("clickhouse.password"); pw != "" {
		opts.Auth.Password = pw
	}
	if user != "" {
		opts.Auth.Username, opts.Auth.Password = user, password
	}
	if t := cfg.sec.chTLS; t != nil {
		skip := opts.TLS != nil && opts.TLS.InsecureSkipVerify // the DSN's skip_verify=true
		opts.TLS = t.Clone()
		opts.TLS.InsecureSkipVerify = opts.TLS.InsecureSkipVerify || skip
	}
	// The database in the DSN may not exist yet (before migrate); every
	// statement names its database explicitly. No database in the hello:
	// the server's default is taken without an access check, whereas naming
	// "default" is refused to a user confined to Canopy's database
	// (allow_databases on 18.16; grants on current releases).
	opts.Auth.Database = ""
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 5 * time.Second
	}
	// A worker writes up to ingest.DefaultSinkInserts INSERTs at once,
	// besides acks and the restater's writes; the driver keeps only 5 idle
	// connections by default and closes the rest when they are released,
	// so every busy turn dialled again and grew new send buffers.
	opts.MaxOpenConns = 16
	opts.MaxIdleConns = opts.MaxOpenConns
	return opts, nil
}
