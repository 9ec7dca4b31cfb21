package ingest

import (
	"context"
	"fmt"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/canopyhq/canopy/schema"
)

// MigrateClickHouse brings the ClickHouse database to the state schema
// describes: it creates what is missing and adds the columns of measures
// declared since the tables were created. It never drops or changes a
// column, so it is idempotent and safe to run while workers write.
func MigrateClickHouse(ctx context.Context, conn driver.Conn, s schema.ClickHouse) error {
	if err := conn.Exec(ctx, s.CreateDatabase()); err != nil {
		return fmt.Errorf("create database %s: %w", s.Database, err)
	}
	for _, t := range s.Tables() {
		if err := conn.Exec(ctx, s.Create(t)); err != nil {
			return fmt.Errorf("create table %s.%s: %w", s.Database, t.Name, err)
		}
		have, err := columns(ctx, conn, s.Database, t.Name)
		if err != nil {
			return err
		}
		for i, col := range t.Columns {
			typ, ok := have[col.Name]
			if ok {
				if typ == "UInt64" && col.Type == "Int64" && col.Name == "events" {
					// Rollups made before restatements existed counted
					// events unsigned.
					if err := conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s.%s MODIFY COLUMN events Int64", s.Database, t.Name)); err != nil {
						return fmt.Errorf("widen %s.%s.events: %w", s.Database, t.Name, err)
					}
					continue
				}
				if typ != col.Type && !sameType(typ, col.Type) {
					return fmt.Errorf("table %s.%s: column %s is %s, canopy.yaml wants %s; change it by hand or rename the measure",
						s.Database, t.Name, col.Name, typ, col.Type)
				}
				continue
			}
			if err := conn.Exec(ctx, s.AddColumn(t, col, t.Columns[i-1].Name)); err != nil {
				return fmt.Errorf("add column %s to %s.%s: %w", col.Name, s.Database, t.Name, err)
			}
		}
	}
	// entities_by_parent arrived after entities: fill it once from there.
	var have, want uint64
	q := "SELECT count() FROM %s.%s"
	if err := conn.QueryRow(ctx, fmt.Sprintf(q, s.Database, schema.TableEntitiesByParent)).Scan(&have); err != nil {
		return err
	}
	if err := conn.QueryRow(ctx, fmt.Sprintf(q, s.Database, schema.TableEntities)).Scan(&want); err != nil {
		return err
	}
	if have == 0 && want > 0 {
		fill := fmt.Sprintf("%s SELECT %s FROM %s.%s", s.Insert(schema.TableEntitiesByParent, s.EntityColumns()),
			schema.ColumnList(s.EntityColumns()), s.Database, schema.TableEntities)
		if err := conn.Exec(ctx, fill); err != nil {
			return fmt.Errorf("fill %s: %w", schema.TableEntitiesByParent, err)
		}
	}
	return nil
}

// ProbeEngine picks the strongest deduplicating engine the server offers:
// Replicated* when ZooKeeper or Keeper answers (with the {shard} and
// {replica} macros, or fixed names when they are not defined), else plain
// engines with non_replicated_deduplication_window where the release has it,
// else plain engines. s is returned with Engine and, if needed, the
// replication names set.
func ProbeEngine(ctx context.Context, conn driver.Conn, s schema.ClickHouse) schema.ClickHouse {
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.zookeeper WHERE path = '/'").Scan(&n); err == nil {
		s.Engine = schema.EngineReplicated
		var macros uint64
		err := conn.QueryRow(ctx, "SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')").Scan(&macros)
		if err != nil || macros < 2 {
			s.ZooKeeperPrefix, s.Replica = "/clickhouse/tables/canopy", "canopy"
		}
		return s
	}
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.merge_tree_settings WHERE name = 'non_replicated_deduplication_window'").Scan(&n); err == nil && n > 0 {
		s.Engine = schema.EngineDedupWindow
		return s
	}
	s.Engine = schema.EnginePlain
	return s
}

func columns(ctx context.Context, conn driver.Conn, db, table string) (map[string]string, error) {
	rows, err := conn.Query(ctx, "SELECT name, type FROM system.columns WHERE database = ? AND table = ?", db, table)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", db, table, err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, err
		}
		out[name] = typ
	}
	return out, rows.Err()
}

// sameType forgives spelling differences between what Canopy writes and what
// ClickHouse reports back ("Decimal(18, 4)" vs "Decimal(18,4)").
func sameType(a, b string) bool {
	strip := func(s string) string {
		out := make([]byte, 0, len(s))
		for i := 0; i < len(s); i++ {
			if s[i] != ' ' {
				out = append(out, s[i])
			}
		}
		return string(out)
	}
	return strip(a) == strip(b)
}

// ReaderStatus says how EnsureReader left the read-only user.
type ReaderStatus string

const (
	ReaderCreated    ReaderStatus = "created or already present (CREATE USER … GRANT SELECT)"
	ReaderConfigured ReaderStatus = "declared in the server's users configuration"
)

// EnsureReader makes the read-only ClickHouse user of Grafana and analysts:
// SELECT on the database and nothing else (no INSERT, no DDL). Servers with
// SQL user management (current releases) get CREATE USER and GRANT SELECT;
// ClickHouse 18.16 has none, so there the user must be declared in
// users.xml with a readonly profile, and EnsureReader checks that it can
// log in.
func EnsureReader(ctx context.Context, conn driver.Conn, dsn, db, user, password string) (ReaderStatus, error) {
	var rbac uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = 'system' AND name = 'users'").Scan(&rbac); err != nil {
		return "", err
	}
	if rbac > 0 {
		quoted := strings.ReplaceAll(password, `\`, `\\`)
		quoted = strings.ReplaceAll(quoted, `'`, `\'`)
		for _, q := range []string{
			fmt.Sprintf("CREATE USER IF NOT EXISTS %s IDENTIFIED WITH sha256_password BY '%s' SETTINGS readonly = 2", user, quoted),
			fmt.Sprintf("GRANT SELECT ON %s.* TO %s", db, user),
		} {
			if err := conn.Exec(ctx, q); err != nil {
				return "", fmt.Errorf("read-only user %s: %w (the migrating user needs access_management)", user, err)
			}
		}
		return ReaderCreated, nil
	}
	o, err := clickhouse.ParseDSN(dsn)
	if err != nil {
		return "", err
	}
	o.Auth = clickhouse.Auth{Database: db, Username: user, Password: password}
	reader, err := clickhouse.Open(o)
	if err == nil {
		err = reader.Ping(ctx)
		_ = reader.Close()
	}
	if err != nil {
		return "", fmt.Errorf("read-only user %s: this ClickHouse has no CREATE USER; declare the user in users.xml with a readonly profile (scripts/services does): %w", user, err)
	}
	return ReaderConfigured, nil
}
